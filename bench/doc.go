// Command bench measures what a proxy pair adds to a gRPC call: it drives the same
// scenarios through direct gRPC, a pair of nginx proxies and a pair of HAProxy proxies
// (each pair joined by TLS 1.3), and a pair of vatcar sidecars joined by CapTP over
// TLS, in one run, and reports each path's numbers and its ratios to the others: to
// direct, and to the better of the two peer pairs.
//
// Two more paths are references rather than peers, both of bench/grpcproxy, a plain
// grpc-go proxy with vatcar's grpc-go settings, sockets and runtime defaults and no
// Cap'n Proto. grpcgo-tls is a reference pair of them joined by gRPC over TLS 1.3: two
// grpc-go servers and two clients where vatcar's pair runs one of each plus a Cap'n
// Proto hop, an alternative design rather than a lower bound. grpcgo-h2c is one of
// them, h2c both sides: one grpc-go server and one grpc-go client with vatcar's
// settings, the grpc-go share of vatcar's pair, measured on the same machine in the
// same run. Neither is ever the "best peer", the targets ignore them, and the
// open-streams row is vatcar's only.
//
// It does not tune any path beyond what a user would configure, and it does not judge
// results across runs: on a shared machine only ratios measured in the same run mean
// anything. Usage:
//
//	go run ./bench [--quick] [--out FILE.json]
//	        [--paths direct,nginx-tls,haproxy-tls,grpcgo-h2c,grpcgo-tls,vatcar]
//
// The JSON file holds {"results": [...]} with one row per scenario and path; a
// Markdown table with the ratios and the targets is printed and written beside
// it (FILE.md). A path that cannot run (nginx or haproxy missing and not installable, a vatcar
// or grpcproxy binary that does not build or start) is reported as skipped with the reason.
package main

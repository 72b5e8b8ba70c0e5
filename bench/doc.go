// Command bench measures what a proxy pair adds to a gRPC call: it drives the same
// scenarios through direct gRPC, a pair of nginx proxies and a pair of HAProxy proxies
// (each pair joined by TLS 1.3), and a pair of vatcar sidecars joined by CapTP over
// TLS, in one run, and reports each path's numbers and its ratios to the others: to
// direct, and to the better of the two peer pairs.
//
// It does not tune any path beyond what a user would configure, and it does not judge
// results across runs: on a shared machine only ratios measured in the same run mean
// anything. Usage:
//
//	go run ./bench [--quick] [--out FILE.json] [--paths direct,nginx-tls,haproxy-tls,vatcar]
//
// The JSON file holds {"results": [...]} with one row per scenario and path; a
// Markdown table with the ratios and the targets is printed and written beside
// it (FILE.md). A path that cannot run (nginx or haproxy missing and not installable, a vatcar
// binary that does not start) is reported as skipped with the reason.
package main

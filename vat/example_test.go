package vat_test

import (
	"context"
	"fmt"

	"github.com/vatcar/vatcar/vat"
)

// Two vats on loopback: one exports a service, the other imports its URI
// and calls it.
func Example() {
	ctx := context.Background()

	table := vat.NewTable(nil)
	defer table.Close()
	_, svc := newEcho("server")
	server, err := vat.New(vat.Config{ListenAddress: "tcp:127.0.0.1:0", Restorer: table})
	if err != nil {
		panic(err)
	}
	defer server.Close()
	l, err := server.Listen()
	if err != nil {
		panic(err)
	}
	go server.Serve(ctx, l)

	id := server.DeriveID("echo")
	table.Add(id, svc)
	uri, err := server.SturdyURI(id)
	if err != nil {
		panic(err)
	}

	client, err := vat.New(vat.Config{})
	if err != nil {
		panic(err)
	}
	defer client.Close()
	ref, err := client.Import(uri)
	if err != nil {
		panic(err)
	}
	c, err := ref.Connect(ctx)
	if err != nil {
		panic(err)
	}
	defer c.Release()
	reply, err := call(ctx, c, "hello")
	fmt.Println(reply, err)
	// Output: server:hello <nil>
}

func ExampleParseURI() {
	loc, id, err := vat.ParseURI("capnp://sha-256:s16WV4JeGusAL_nTjvICiQOFqm3LqYrDj3K-HXdMi8s@localhost:7000/bWFpbg")
	if err != nil {
		panic(err)
	}
	fmt.Println(loc.Address, loc.Digest, string(id))
	fmt.Println(vat.FormatURI(loc, id))

	_, _, err = vat.ParseURI("capnp://sha-256:s16WV4JeGusAL_nTjvICiQOFqm3LqYrDj3K-HXdMi8s@localhost/bWFpbg")
	fmt.Println(err)
	// Output:
	// tcp:localhost:7000 sha-256:s16WV4JeGusAL_nTjvICiQOFqm3LqYrDj3K-HXdMi8s main
	// capnp://sha-256:s16WV4JeGusAL_nTjvICiQOFqm3LqYrDj3K-HXdMi8s@localhost:7000/bWFpbg
	// invalid capnp URI: Missing port in "capnp://sha-256:s16WV4JeGusAL_nTjvICiQOFqm3LqYrDj3K-HXdMi8s@localhost/..."
}

func ExampleDeriveID() {
	pem := []byte("-----BEGIN PRIVATE KEY-----\nfake\n-----END PRIVATE KEY-----\n")
	fmt.Printf("%x\n", []byte(vat.DeriveID(pem, "my-service")))
	// Output: 2559b0d61b426c897afe4b74f3d31dba8b15478e14479734b8570357121e95bd
}

func ExampleURIRevocationID() {
	// The revocation id of a leaked URI, for a revocation list: a hash that
	// names the ref without granting anything.
	r, err := vat.URIRevocationID("capnp://sha-256:s16WV4JeGusAL_nTjvICiQOFqm3LqYrDj3K-HXdMi8s@localhost:7000/bWFpbg")
	fmt.Println(r, err)
	fmt.Println(vat.ServiceID("main").RevocationID() == r)
	// Output:
	// rev1:B015wnUJAxb-Wys32ywjHA <nil>
	// true
}

func ExampleTable_Remove() {
	ctx := context.Background()
	table := vat.NewTable(nil)
	defer table.Close()
	_, svc := newEcho("svc")
	id := vat.GenerateID()
	table.Add(id, svc)

	c, _ := table.Restore(ctx, id)
	defer c.Release()
	reply, err := call(ctx, c, "a")
	fmt.Println(reply, err)

	table.Remove(id) // revokes c
	_, err = call(ctx, c, "b")
	fmt.Println(err != nil)
	_, err = table.Restore(ctx, id)
	fmt.Println(vat.IsUnknownService(err))
	// Output:
	// svc:a <nil>
	// true
	// true
}

func ExampleAddress() {
	a, err := vat.ParseAddress("tcp:[::1]:7000")
	fmt.Println(a.Host, a.Port, a, err)
	// Output: ::1 7000 tcp:[::1]:7000 <nil>
}

func ExampleNarrow() {
	// Narrow a ref offline: only one method, bound to one importing vat.
	// Anyone holding a ref can do this; nobody can undo it.
	root := vat.ServiceID("the export's secret id, 32 bytes")
	importer := vat.Digest{1, 2, 3}
	seg, err := vat.Narrow(root, vat.Block{Methods: []string{"/helloworld.Greeter/SayHello"}, Peers: []vat.Digest{importer}})
	if err != nil {
		panic(err)
	}
	tok, err := vat.ParseToken(seg)
	if err != nil {
		panic(err)
	}
	// The exporter recomputes the chain from the root id.
	revs, ok := tok.Verify(root)
	fmt.Println(ok, len(revs), revs[len(revs)-1] == tok.RevocationID())
	c := vat.Caveats{Blocks: tok.Blocks}
	fmt.Println(c.CheckMethod("/helloworld.Greeter/SayHello") == nil, c.CheckMethod("/helloworld.Greeter/Admin") != nil)
	fmt.Println(c.CheckPeer(importer) == nil, c.CheckPeer(vat.Digest{9}) != nil)
	// Output:
	// true 2 true
	// true true
	// true true
}

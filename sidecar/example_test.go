package sidecar_test

import (
	"fmt"
	"io"

	"github.com/vatcar/vatcar/sidecar"
)

func ExampleParseFlags() {
	cfg, err := sidecar.ParseFlags([]string{
		"--listen", "tcp:0.0.0.0:7000", "--public-address", "tcp:greeter.ns.svc:7000",
		"--export", "greeter=127.0.0.1:50051",
		"--import", "billing=@/caps/billing.cap,listen=127.0.0.1:9000",
	}, io.Discard)
	fmt.Println(cfg.Exports, cfg.Imports, err)

	_, err = sidecar.ParseFlags([]string{"--listen", "tcp:0.0.0.0:7000", "--export", "bad name=127.0.0.1:1"}, io.Discard)
	fmt.Println(err)
	// Output:
	// [{greeter 127.0.0.1:50051}] [{billing @/caps/billing.cap 127.0.0.1:9000}] <nil>
	// bad configuration: bad export NAME "bad name": want letters, digits, '.', '_' and '-', starting with a letter or digit
}

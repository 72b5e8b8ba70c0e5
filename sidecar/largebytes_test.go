package sidecar

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/vatcar/vatcar/bridge"
)

// startRawEcho serves every method as a raw echo of each message.
func startRawEcho(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.ForceServerCodecV2(bridge.Codec()), grpc.MaxRecvMsgSize(8<<20), grpc.MaxSendMsgSize(8<<20),
		grpc.UnknownServiceHandler(func(_ any, ss grpc.ServerStream) error {
			for {
				var m []byte
				if err := ss.RecvMsg(&m); err == io.EOF {
					return nil
				} else if err != nil {
					return err
				}
				if err := ss.SendMsg(m); err != nil {
					return err
				}
			}
		}))
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return ln.Addr().String()
}

// rawPair starts an exporting sidecar for target and an importing one,
// and returns the exporter and a raw-codec client of the import (messages
// up to 8 MiB), closed at the end of the test.
func rawPair(t *testing.T, target string) (*Sidecar, *grpc.ClientConn) {
	t.Helper()
	dir := t.TempDir()
	exp := startTestSidecar(t, Config{
		Listen: "tcp:127.0.0.1:0", SecretKeyFile: filepath.Join(dir, "k.pem"), CapDir: dir,
		Exports: []Export{{Name: "test", Target: target}},
	})
	imp := startTestSidecar(t, Config{Imports: []Import{{Name: "test", URI: "@" + filepath.Join(dir, "test.cap")}}})
	cc, err := grpc.NewClient(imp.Addresses().Imports["test"], grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(8<<20), grpc.MaxCallSendMsgSize(8<<20), grpc.ForceCodecV2(bridge.Codec())))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return exp, cc
}

// TestLargeStreamsKeepTheirBytes: many concurrent streams of large,
// distinct messages through a real sidecar pair come back byte for byte.
// Messages over 64 KiB are read into pooled buffers that go back when the
// message is released (vat.decodeLarge): a buffer reused too early would
// show here as bytes from another message.
func TestLargeStreamsKeepTheirBytes(t *testing.T) {
	if raceDetector {
		t.Skip("tens of MiB of copies take long under -race; CI runs this package without it too")
	}
	_, cc := rawPair(t, startRawEcho(t))
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	const streams, msgs = 6, 25
	var wg sync.WaitGroup
	errs := make(chan error, streams)
	for s := range streams {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(s), 7))
			st, err := cc.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}, "/t.T/Echo")
			if err != nil {
				errs <- err
				return
			}
			sent := make(chan []byte, msgs)
			go func() {
				for i := range msgs {
					b := make([]byte, 60<<10+r.IntN(900<<10))
					for j := range b {
						b[j] = byte(s*31 + i*7 + j)
					}
					sent <- b
					if err := st.SendMsg(b); err != nil {
						return
					}
				}
				st.CloseSend()
			}()
			for i := range msgs {
				var got []byte
				if err := st.RecvMsg(&got); err != nil {
					errs <- fmt.Errorf("stream %d msg %d: %v", s, i, err)
					return
				}
				want := <-sent
				if !bytes.Equal(got, want) {
					errs <- fmt.Errorf("stream %d msg %d: %d bytes differ from the %d sent", s, i, len(got), len(want))
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestLargeUnaryKeepTheirBytes: concurrent one-message calls (the
// unary path, replies inline in the Return) of 60 KiB to 1 MiB.
func TestLargeUnaryKeepTheirBytes(t *testing.T) {
	if raceDetector {
		t.Skip("tens of MiB of copies take long under -race; CI runs this package without it too")
	}
	_, cc := rawPair(t, startRawEcho(t))
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for s := range 8 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(s), 9))
			for i := range 30 {
				b := make([]byte, 60<<10+r.IntN(960<<10))
				for j := range b {
					b[j] = byte(s*13 + i*5 + j*3)
				}
				var got []byte
				if err := cc.Invoke(ctx, "/t.T/Echo", b, &got); err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(got, b) {
					errs <- fmt.Errorf("call %d/%d: reply differs", s, i)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestEgressInflightBackendDown: calls to a backend that is down fail,
// and the egress counts (drain's and the gauge) come back to zero.
func TestEgressInflightBackendDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	exp, cc := rawPair(t, dead)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for range 3 {
		var got []byte
		if err := cc.Invoke(ctx, "/t.T/Echo", []byte("x"), &got); err == nil {
			t.Fatal("call to a dead backend succeeded")
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for exp.egressInflight.Load() != 0 || inFlight(t, exp.Metrics(), SideEgress) != 0 { // poll
		if time.Now().After(deadline) {
			t.Fatalf("egress in flight %d, gauge %v after every call failed", exp.egressInflight.Load(), inFlight(t, exp.Metrics(), SideEgress))
		}
		runtime.Gosched()
	}
	if calls, _ := callSeries(t, exp.Metrics(), SideEgress, "/t.T/Echo", "Unavailable"); calls != 3 {
		t.Errorf("egress Unavailable calls %v, want 3", calls)
	}
}

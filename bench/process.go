package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// process is a proxy process the harness started; its output goes to a log file and
// its last lines are kept for error messages.
type process struct {
	name string
	cmd  *exec.Cmd
	out  *tailWriter
	done chan struct{} // closed when the process has exited
	err  error         // why it exited; read after done
}

// startProcess starts bin with args and extra environment variables (KEY=VALUE), its
// stdout and stderr appended to logPath.
func startProcess(name, bin string, args, env []string, logPath string) (*process, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open log of %s: %w", name, err)
	}
	p := &process{name: name, out: &tailWriter{max: 4096}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	if len(env) > 0 {
		p.cmd.Env = append(os.Environ(), env...)
	}
	w := io.MultiWriter(logf, p.out)
	p.cmd.Stdout, p.cmd.Stderr = w, w
	dieWithParent(p.cmd)
	if err := p.cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	return p, nil
}

// PID is the process id.
func (p *process) PID() int { return p.cmd.Process.Pid }

// exited reports why the process is gone, naming its last output.
func (p *process) exited() error {
	return fmt.Errorf("%s exited (%v): %s", p.name, p.err, p.out.LastLines(3))
}

// firstExited returns why the first of procs that has exited did so, or nil.
func firstExited(procs ...*process) error {
	for _, p := range procs {
		if p == nil {
			continue
		}
		select {
		case <-p.done:
			return p.exited()
		default:
		}
	}
	return nil
}

// Stop sends SIGTERM and waits for the exit; after 10 s it kills the process.
func (p *process) Stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	select {
	case <-p.done:
	case <-t.C:
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// tailWriter keeps the last max bytes written to it.
type tailWriter struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (t *tailWriter) Write(b []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, b...)
	if over := len(t.buf) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(b), nil
}

// LastLines returns the last n non-empty lines, joined by " | ".
func (t *tailWriter) LastLines(n int) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var lines []string
	for l := range strings.SplitSeq(string(bytes.TrimSpace(t.buf)), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	if len(lines) == 0 {
		return "(no output)"
	}
	return strings.Join(lines, " | ")
}

// freePort returns a 127.0.0.1 port that was free a moment ago.
func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free port: %w", err)
	}
	addr := l.Addr().String()
	return addr, l.Close()
}

// dial opens a gRPC client connection (h2c) to target with the raw codec.
func dial(target string) (*grpc.ClientConn, error) {
	cc, err := grpc.NewClient(target,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(
			grpc.ForceCodecV2(rawCodec{}),
			grpc.MaxCallRecvMsgSize(maxMessage),
			grpc.MaxCallSendMsgSize(maxMessage),
		),
	)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", target, err)
	}
	return cc, nil
}

// waitReady polls target with a unary call until one succeeds, the timeout passes, or
// one of procs exits.
func waitReady(ctx context.Context, target string, timeout time.Duration, procs ...*process) error {
	cc, err := dial(target)
	if err != nil {
		return err
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	req := []byte("ready?")
	var lastErr error
	for {
		for _, p := range procs {
			select {
			case <-p.done:
				return p.exited()
			default:
			}
		}
		callCtx, callCancel := context.WithTimeout(ctx, time.Second)
		var resp []byte
		lastErr = cc.Invoke(callCtx, methodUnary, &req, &resp)
		callCancel()
		if lastErr == nil && bytes.Equal(resp, req) {
			return nil
		}
		if lastErr == nil {
			lastErr = fmt.Errorf("echo returned %q, want %q", resp, req)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %s after %v: last call: %w", errNotReady, target, timeout, lastErr)
		case <-tick.C:
		}
	}
}

// waitFile polls until path exists, the timeout passes, or one of procs exits.
func waitFile(ctx context.Context, path string, timeout time.Duration, procs ...*process) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		} else if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("wait for %s: %w", path, err)
		}
		for _, p := range procs {
			select {
			case <-p.done:
				return p.exited()
			default:
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %s not written after %v", errNotReady, path, timeout)
		case <-tick.C:
		}
	}
}

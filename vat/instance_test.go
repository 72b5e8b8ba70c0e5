package vat

import (
	"crypto/x509"
	"errors"
	"strings"
	"testing"
)

func TestKeepNewConnection(t *testing.T) {
	lo, hi := Digest{1}, Digest{2}
	i1, i2 := Instance{1}, Instance{2}
	for _, tt := range []struct {
		name      string
		me, peer  identity
		prev, new Mode
		want      bool
	}{
		{"peer reconnects", identity{lo, i1}, identity{hi, i1}, Accept, Accept, true},
		{"second dial reaches the same process", identity{lo, i1}, identity{hi, i1}, Connect, Connect, false},
		{"crossed, my digest greater, new is mine", identity{hi, i1}, identity{lo, i2}, Accept, Connect, true},
		{"crossed, my digest greater, new is theirs", identity{hi, i1}, identity{lo, i2}, Connect, Accept, false},
		{"crossed, my digest smaller, new is mine", identity{lo, i2}, identity{hi, i1}, Accept, Connect, false},
		{"crossed, my digest smaller, new is theirs", identity{lo, i2}, identity{hi, i1}, Connect, Accept, true},
		{"crossed instances of one identity, mine greater, new is mine", identity{lo, i2}, identity{lo, i1}, Accept, Connect, true},
		{"crossed instances of one identity, mine smaller, new is mine", identity{lo, i1}, identity{lo, i2}, Accept, Connect, false},
		{"crossed instances of one identity, mine smaller, new is theirs", identity{lo, i1}, identity{lo, i2}, Connect, Accept, true},
		{"peer without instance, digest decides", identity{hi, i1}, identity{lo, Instance{}}, Connect, Accept, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := keepNewConnection(tt.me, tt.peer, tt.prev, tt.new); got != tt.want {
				t.Errorf("keepNewConnection(me %v/%v, peer %v/%v, prev %v, new %v) = %v, want %v",
					tt.me.digest, tt.me.instance, tt.peer.digest, tt.peer.instance, tt.prev, tt.new, got, tt.want)
			}
			// Both ends of crossed connections agree: what is new here
			// (mode) is prev there, and the other way round.
			if tt.prev != tt.new {
				mine := tt.want == (tt.new == Connect) // is the kept one initiated by me?
				theirsNew := keepNewConnection(tt.peer, tt.me, tt.new, tt.prev)
				theirsKeepsMine := theirsNew == (tt.prev == Accept)
				if mine != theirsKeepsMine {
					t.Errorf("the two ends keep different connections")
				}
			}
		})
	}
}

func TestCertificateAnnouncesInstance(t *testing.T) {
	k, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		in   Instance
	}{
		{"instance", newInstance()},
		{"none (OCaml, C++, older vatcar)", Instance{}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cert, err := selfSigned(k.signer, tt.in)
			if err != nil {
				t.Fatal(err)
			}
			parsed, err := x509.ParseCertificate(cert.Certificate[0])
			if err != nil {
				t.Fatal(err)
			}
			if got := certInstance(parsed); got != tt.in {
				t.Errorf("certInstance = %v, want %v", got, tt.in)
			}
			if parsed.Subject.CommonName != "capnp" {
				t.Errorf("CN = %q, want capnp", parsed.Subject.CommonName)
			}
		})
	}
	for _, serial := range []string{"vatcar-instance:zz", "vatcar-instance:00", "other", "vatcar-instance:" + string(make([]byte, 32))} {
		c := &x509.Certificate{}
		c.Subject.SerialNumber = serial
		if got := certInstance(c); !got.IsZero() {
			t.Errorf("certInstance(serial %q) = %v, want zero", serial, got)
		}
	}
}

func TestRedactID(t *testing.T) {
	id := ServiceID("0123456789abcdefghij")
	peer := errors.Join(ErrUnknownService, errors.New("Server exports no such capability.; name = "+string(id)+" ("+id.Base64()+")"))
	err := redactID(peer, id)
	if msg := err.Error(); strings.Contains(msg, string(id)) || strings.Contains(msg, id.Base64()) || !strings.Contains(msg, "<service id>") {
		t.Errorf("redacted error %q still holds the id, or says nothing of it", msg)
	}
	if !errors.Is(err, ErrUnknownService) {
		t.Error("redaction lost the error's sentinel")
	}
	if plain := errors.New("connection refused"); redactID(plain, id) != plain {
		t.Error("an error without the id was rewrapped")
	}
}

package wgconfig

import (
	"crypto/ecdh"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
)

// KeyLen is the length of a WireGuard key in bytes.
const KeyLen = 32

// Key is a Curve25519 key as WireGuard uses it: a private key, a public key
// or a preshared key. Its text form is standard base64 (44 characters), as
// `wg genkey` prints it.
type Key [KeyLen]byte

// ErrBadKey is returned for text that is not a base64-encoded 32-byte key.
var ErrBadKey = errors.New("wgconfig: bad key")

// ParseKey parses a base64-encoded key.
func ParseKey(s string) (Key, error) {
	var k Key
	if len(s) != base64.StdEncoding.EncodedLen(KeyLen) {
		return k, fmt.Errorf("%w: want %d base64 characters, got %d", ErrBadKey, base64.StdEncoding.EncodedLen(KeyLen), len(s))
	}
	b, err := base64.StdEncoding.Strict().DecodeString(s)
	if err != nil || len(b) != KeyLen {
		return k, fmt.Errorf("%w: not base64", ErrBadKey)
	}
	copy(k[:], b)
	return k, nil
}

// NewPrivateKey returns a fresh random private key, clamped as `wg genkey`
// clamps it.
func NewPrivateKey() (Key, error) {
	var k Key
	if _, err := rand.Read(k[:]); err != nil {
		return Key{}, fmt.Errorf("wgconfig: generate key: %w", err)
	}
	k[0] &= 248
	k[31] = (k[31] & 127) | 64
	return k, nil
}

// PublicKey returns the public key of private key k, as `wg pubkey` does.
func (k Key) PublicKey() Key {
	priv, err := ecdh.X25519().NewPrivateKey(k[:])
	if err != nil {
		// Only a wrong length fails, and a Key has the right one.
		panic("wgconfig: x25519: " + err.Error())
	}
	var pub Key
	copy(pub[:], priv.PublicKey().Bytes())
	return pub
}

// IsZero reports whether k is all zeros (no key).
func (k Key) IsZero() bool { return k == Key{} }

// String returns k in base64, the form configs and `wg` use.
func (k Key) String() string { return base64.StdEncoding.EncodeToString(k[:]) }

// Hex returns k in lower-case hex, the form wireguard-go's UAPI uses.
func (k Key) Hex() string { return hex.EncodeToString(k[:]) }

package main

import (
	"bufio"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/gpumesh/gpumesh/overlay/wg/wgconfig"
)

func newKeygenCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "keygen",
		Short: "Print a new WireGuard private key (like wg genkey)",
		Long: "keygen prints a new random WireGuard private key in base64 on stdout, as `wg genkey` does.\n" +
			"Pipe it to `gpumesh pubkey` for the matching public key.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			k, err := wgconfig.NewPrivateKey()
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), k)
			return err
		},
	}
}

func newPubkeyCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "pubkey",
		Short: "Read a WireGuard private key on stdin, print its public key (like wg pubkey)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			pub, err := pubkey(cmd.InOrStdin())
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), pub)
			return err
		},
	}
}

// pubkey reads one base64 private key (surrounding whitespace allowed) and
// returns its public key.
func pubkey(r io.Reader) (wgconfig.Key, error) {
	// A key is 44 characters; read a little more to notice trailing junk.
	b, err := io.ReadAll(io.LimitReader(bufio.NewReader(r), 256))
	if err != nil {
		return wgconfig.Key{}, fmt.Errorf("pubkey: read stdin: %w", err)
	}
	priv, err := wgconfig.ParseKey(strings.TrimSpace(string(b)))
	if err != nil {
		return wgconfig.Key{}, fmt.Errorf("pubkey: private key on stdin: %w", err)
	}
	return priv.PublicKey(), nil
}

package tsnet

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
)

// prepareStateDir makes dir ready to hold a node's state, which includes
// its private keys, the way a careful daemon does (ssh, gpg):
//
//   - a path that does not exist is created with mode 0700;
//   - an existing directory must belong to this user and must not be
//     writable by group or others (a shared directory such as /tmp, mode
//     1777, is refused, never chmod'ed);
//   - an existing directory of this user's that others may read or enter is
//     made private (0700): the keys in it are this node's.
func prepareStateDir(dir string) error {
	if _, err := os.Lstat(dir); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("tsnet: state dir: %w", err)
		}
	} else if err != nil {
		return fmt.Errorf("tsnet: state dir: %w", err)
	}
	// Stat follows a symbolic link: what matters is the directory the
	// keys end up in.
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("tsnet: state dir: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("tsnet: state dir %s is not a directory", dir)
	}
	if uid, ok := ownerOf(fi); ok && uid != os.Geteuid() {
		return fmt.Errorf("tsnet: state dir %s belongs to uid %d, not to this user (uid %d); it would hold this node's private keys: "+
			"use a directory this user owns (a path that does not exist yet is created with mode 0700)", dir, uid, os.Geteuid())
	}
	mode := modeText(fi.Mode())
	if fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("tsnet: state dir %s is writable by other users (mode %s); it would hold this node's private keys, "+
			"and gpumesh does not change the mode of a directory others may share: use a directory of its own "+
			"(a path that does not exist yet is created with mode 0700), or, if no one else uses this one, chmod 0700 %s", dir, mode, dir)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("tsnet: state dir %s (mode %s): make it private: %w", dir, mode, err)
		}
	}
	return nil
}

// modeText is a directory's permission bits in octal, with the sticky,
// setgid and setuid bits: "1777", "0755".
func modeText(m fs.FileMode) string {
	n := uint32(m.Perm())
	if m&fs.ModeSticky != 0 {
		n |= 0o1000
	}
	if m&fs.ModeSetgid != 0 {
		n |= 0o2000
	}
	if m&fs.ModeSetuid != 0 {
		n |= 0o4000
	}
	return fmt.Sprintf("%04o", n)
}

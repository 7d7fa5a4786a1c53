package gpumesh_test

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestReadmeLayout: the README's layout table names every directory that
// holds Go files (testdata aside), and every path it names exists: the
// table cannot drift from the packages.
func TestReadmeLayout(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, table, ok := strings.Cut(string(readme), "\n## Layout\n")
	if !ok {
		t.Fatal("README.md has no ## Layout section")
	}
	table, _, _ = strings.Cut(table, "\n## ")
	named := map[string]bool{}
	pathLike := regexp.MustCompile(`^[a-z0-9_.-]+(/[a-z0-9_.-]+)*/?$`)
	for _, m := range regexp.MustCompile("`([^`]+)`").FindAllStringSubmatch(table, -1) {
		p := m[1]
		if !pathLike.MatchString(p) || !strings.Contains(p, "/") {
			continue
		}
		p = strings.TrimSuffix(p, "/")
		named[p] = true
		if fi, err := os.Stat(p); err != nil || !fi.IsDir() {
			t.Errorf("the layout table names %s, which is not a directory", p)
		}
	}
	err = filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() && path != "." && (strings.HasPrefix(name, ".") || name == "testdata" || name == "node_modules" || name == "bin") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(name, ".go") {
			return nil
		}
		dir := filepath.Dir(path)
		if dir != "." && !named[dir] && !named[dir+"/"] {
			t.Errorf("%s holds Go files but the README's layout table does not name it", dir)
			named[dir] = true // once
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// Command modproxy serves modules from a directory tree the way a module
// proxy serves tagged versions, for the release check of .ci/run:
//
//	go run . [-proxy DIR] VERSION MODULEPATH=DIR...
//
// For each module it prints the two go.sum lines that a requirer of
// MODULEPATH at VERSION needs, computed from DIR as it stands; with -proxy
// it also writes DIR's module zip, go.mod, .info and list into a tree that
// GOPROXY=file://DIR serves. Modules are handled in order, so a module
// whose go.mod was just rewritten to require an earlier one hashes as
// rewritten. The zip holds what golang.org/x/mod/zip takes from DIR (no
// nested module, no vendor directory): give it a copy of the tracked files.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/mod/module"
	"golang.org/x/mod/sumdb/dirhash"
	modzip "golang.org/x/mod/zip"
)

func main() {
	proxy := flag.String("proxy", "", "write a file-based module proxy tree into `DIR`")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: modproxy [-proxy DIR] VERSION MODULEPATH=DIR...")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() < 2 {
		flag.Usage()
		os.Exit(2)
	}
	version := flag.Arg(0)
	for _, arg := range flag.Args()[1:] {
		path, dir, ok := strings.Cut(arg, "=")
		if !ok {
			flag.Usage()
			os.Exit(2)
		}
		if err := serve(*proxy, module.Version{Path: path, Version: version}, dir); err != nil {
			fmt.Fprintln(os.Stderr, "modproxy:", err)
			os.Exit(1)
		}
	}
}

// serve prints m's go.sum lines, computed from dir, and writes m into the
// proxy tree at proxy unless proxy is "".
func serve(proxy string, m module.Version, dir string) error {
	if err := module.Check(m.Path, m.Version); err != nil {
		return err
	}
	gomod, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	if err != nil {
		return err
	}
	var zip bytes.Buffer
	if err := modzip.CreateFromDir(&zip, m, dir); err != nil {
		return fmt.Errorf("zip of %s from %s: %w", m, dir, err)
	}
	tmp, err := os.CreateTemp("", "modproxy-*.zip")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(zip.Bytes()); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	zipSum, err := dirhash.HashZip(tmp.Name(), dirhash.Hash1)
	if err != nil {
		return err
	}
	modSum, err := dirhash.Hash1([]string{"go.mod"}, func(string) (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(gomod)), nil
	})
	if err != nil {
		return err
	}
	fmt.Printf("%s %s %s\n%s %s/go.mod %s\n", m.Path, m.Version, zipSum, m.Path, m.Version, modSum)
	if proxy == "" {
		return nil
	}
	esc, err := module.EscapePath(m.Path)
	if err != nil {
		return err
	}
	v := filepath.Join(proxy, filepath.FromSlash(esc), "@v")
	if err := os.MkdirAll(v, 0o755); err != nil {
		return err
	}
	info, _ := json.Marshal(struct {
		Version string
		Time    time.Time
	}{m.Version, time.Now().UTC().Truncate(time.Second)})
	list, err := os.OpenFile(filepath.Join(v, "list"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(list, m.Version)
	if cerr := list.Close(); err == nil {
		err = cerr
	}
	for _, f := range []struct {
		ext  string
		data []byte
	}{{".info", info}, {".mod", gomod}, {".zip", zip.Bytes()}} {
		if err == nil {
			err = os.WriteFile(filepath.Join(v, m.Version+f.ext), f.data, 0o644)
		}
	}
	return err
}

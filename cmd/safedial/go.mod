module github.com/safedial/safedial/cmd/safedial

go 1.26.0

replace (
	github.com/safedial/safedial => ../..
	github.com/safedial/safedial/prometheus => ../../prometheus
)

require (
	github.com/google/go-cmp v0.7.0
	github.com/safedial/safedial v0.0.0-00010101000000-000000000000
)

require golang.org/x/sys v0.50.0 // indirect

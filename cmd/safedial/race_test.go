//go:build linux && race

package main

// raceEnabled: the race detector's shadow memory never goes back to the
// system, so TestExporterStalledClients checks the RSS only without it.
const raceEnabled = true

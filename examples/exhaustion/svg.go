package main

import (
	"fmt"
	"strings"
)

// latencySVG draws median (solid) and p99 (dashed) connect latency against
// the share of the range in use, one colour per dialer. It is a few lines of
// hand-written SVG, so the module needs no plotting library.
func latencySVG(c config, rows []latencyRow) []byte {
	const (
		w, h                   = 640, 400
		left, right, top, bott = 70, 190, 40, 50
	)
	maxY := 1.0
	for _, r := range rows {
		maxY = max(maxY, r.P99US, r.MedianUS)
	}
	maxY *= 1.1
	x := func(pct int) float64 { return left + float64(pct)/100*(w-left-right) }
	y := func(us float64) float64 { return h - bott - us/maxY*(h-top-bott) }

	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", w, h)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", w, h)
	fmt.Fprintf(&b, `<text x="%d" y="22" font-size="14">connect latency vs share of a %d-port range in use (one destination)</text>`+"\n", left, c.LatencyPort)
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>`+"\n", left, h-bott, w-right, h-bott)
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>`+"\n", left, top, left, h-bott)
	for _, pct := range []int{0, 25, 50, 75, 100} {
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%d%%</text>`+"\n", x(pct), h-bott+18, pct)
	}
	for i := 0; i <= 4; i++ {
		v := maxY * float64(i) / 4
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%.0f µs</text>`+"\n", left-6, y(v)+4, v)
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>`+"\n", left, y(v), w-right, y(v))
	}
	colours := []string{"#1f77b4", "#d62728", "#2ca02c", "#9467bd"}
	var names []string
	series := map[string][]latencyRow{}
	for _, r := range rows {
		if _, ok := series[r.Dialer]; !ok {
			names = append(names, r.Dialer)
		}
		series[r.Dialer] = append(series[r.Dialer], r)
	}
	for i, name := range names {
		col := colours[i%len(colours)]
		for _, s := range []struct {
			dash string
			val  func(latencyRow) float64
		}{{"", func(r latencyRow) float64 { return r.MedianUS }}, {` stroke-dasharray="5,4"`, func(r latencyRow) float64 { return r.P99US }}} {
			var pts []string
			for _, r := range series[name] {
				pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(r.FillPct), y(s.val(r))))
			}
			fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2"%s points="%s"/>`+"\n", col, s.dash, strings.Join(pts, " "))
			for _, r := range series[name] {
				fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>`+"\n", x(r.FillPct), y(s.val(r)), col)
			}
		}
		ly := top + 20 + i*20
		fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2"/>`+"\n", w-right+10, ly, w-right+30, ly, col)
		fmt.Fprintf(&b, `<text x="%d" y="%d">%s</text>`+"\n", w-right+35, ly+4, name)
	}
	ly := top + 20 + len(names)*20 + 10
	fmt.Fprintf(&b, `<text x="%d" y="%d">solid: median, dashed: p99</text>`+"\n", w-right+10, ly)
	fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">share of the ephemeral range in use</text>`+"\n", x(50), h-12)
	b.WriteString("</svg>\n")
	return []byte(b.String())
}

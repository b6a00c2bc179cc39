// Package static holds the demo page and the browser helper, embedded in the binary.
package static

import "embed"

// FS serves / (index.html) and /ssebridge.js.
//
//go:embed index.html ssebridge.js
var FS embed.FS

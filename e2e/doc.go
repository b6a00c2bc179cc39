// Package e2e holds ssebridge's end-to-end tests: they build the program
// once, run it as a process against real redis-server processes, and talk
// to it over real HTTP, from Go, nginx, Django and headless Chromium. It
// has no code of its own outside its tests; see README.md in this folder.
package e2e

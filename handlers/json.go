package handlers

import (
	"encoding/json"

	"github.com/labstack/echo/v4"
)

// jsonSerializer is Echo's JSON encoding without HTML escaping: an error
// that quotes "<b>" says "<b>", not "\u003cb\u003e". The answers are
// application/json, never HTML, so the escaping protects nothing.
type jsonSerializer struct{ echo.DefaultJSONSerializer }

func (jsonSerializer) Serialize(c echo.Context, i any, indent string) error {
	enc := json.NewEncoder(c.Response())
	enc.SetEscapeHTML(false)
	if indent != "" {
		enc.SetIndent("", indent)
	}
	return enc.Encode(i)
}

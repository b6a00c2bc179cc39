package wire

import (
	"errors"
	"strings"
	"testing"
)

func TestEncodeMessage(t *testing.T) {
	tests := []struct {
		name    string
		payload string
		want    string
		err     error
	}{
		{"envelope", `{"event":"chat","data":{"from":"bob","text":"hi"}}`, "event: chat\ndata: {\"from\":\"bob\",\"text\":\"hi\"}\n\n", nil},
		{"string data as is", `{"event":"chat","data":"hi there"}`, "event: chat\ndata: hi there\n\n", nil},
		{"default event name", `{"data":1}`, "event: message\ndata: 1\n\n", nil},
		{"empty event name", `{"event":"","data":1}`, "event: message\ndata: 1\n\n", nil},
		{"id first", `{"id":"42","event":"e","data":"x"}`, "id: 42\nevent: e\ndata: x\n\n", nil},
		{"integer id", `{"id":42,"data":"x"}`, "id: 42\nevent: message\ndata: x\n\n", nil},
		{"null data", `{"data":null}`, "event: message\ndata: null\n\n", nil},
		{"LF lines", `{"data":"a\nb"}`, "event: message\ndata: a\ndata: b\n\n", nil},
		{"CRLF and CR lines", `{"data":"a\r\nb\rc"}`, "event: message\ndata: a\ndata: b\ndata: c\n\n", nil},
		{"trailing newline kept", `{"data":"a\n"}`, "event: message\ndata: a\ndata: \n\n", nil},
		{"empty string data", `{"data":""}`, "event: message\ndata: \n\n", nil},
		{"leading space kept", `{"data":" x"}`, "event: message\ndata:  x\n\n", nil},
		{"plain text", "hello", "event: message\ndata: hello\n\n", nil},
		{"plain multi-line text", "a\nb", "event: message\ndata: a\ndata: b\n\n", nil},
		{"object without data is sent whole", `{"event":"x"}`, "event: message\ndata: {\"event\":\"x\"}\n\n", nil},
		{"broken JSON is sent whole", `{"data":`, "event: message\ndata: {\"data\":\n\n", nil},
		{"JSON behind a vertical tab is sent whole", "\v{\"data\":1}", "event: message\ndata: \v{\"data\":1}\n\n", nil},
		{"JSON behind a no-break space is sent whole", "\u00a0{\"data\":1}", "event: message\ndata: \u00a0{\"data\":1}\n\n", nil},
		{"keys are matched exactly", `{"Event":"logout","DATA":"x"}`, "event: message\ndata: {\"Event\":\"logout\",\"DATA\":\"x\"}\n\n", nil},
		{"a key of other case is not the key", `{"data":1,"Data":2,"EVENT":"x"}`, "event: message\ndata: 1\n\n", nil},
		{"JSON white space around the object", " \t\r\n{\"data\":1}\n", "event: message\ndata: 1\n\n", nil},
		{"LF in event", `{"event":"a\nb","data":1}`, "", ErrBadField},
		{"CR in event", `{"event":"a\rb","data":1}`, "", ErrBadField},
		{"LF in id", `{"id":"1\n","data":1}`, "", ErrBadField},
		{"NUL in id", `{"id":"1\u0000","data":1}`, "", ErrBadField},
		{"event not a string", `{"event":{},"data":1}`, "", ErrBadEnvelope},
		{"id not a string", `{"id":[1],"data":1}`, "", ErrBadEnvelope},
		{"too large", `{"data":"` + strings.Repeat("x", 200) + `"}`, "", ErrTooLarge},
		// Live ids: a safe alphabet only, so that no id can come back as a
		// cursor, however a client or HTTP trims or reads it.
		{"uuid id", `{"id":"0f8fad5b-d9cb-469f-a165-70867728950e","data":1}`, "id: 0f8fad5b-d9cb-469f-a165-70867728950e\nevent: message\ndata: 1\n\n", nil},
		{"base64 id", `{"id":"a+b/c=_~@","data":1}`, "id: a+b/c=_~@\nevent: message\ndata: 1\n\n", nil},
		{"cursor id", `{"id":"E:1-0","data":1}`, "", ErrBadField},
		{"cursor id behind a space", `{"id":" E:1-0","data":1}`, "", ErrBadField},
		{"cursor id before a space", `{"id":"E:1-0 ","data":1}`, "", ErrBadField},
		{"cursor id behind a tab", `{"id":"\tE:1-0","data":1}`, "", ErrBadField},
		{"cursor id behind a no-break space", `{"id":"\u00a0E:1-0","data":1}`, "", ErrBadField},
		{"cluster id", `{"id":"k3x9.lq2.0.5","data":1}`, "", ErrBadField},
		{"colon", `{"id":"order:17","data":1}`, "", ErrBadField},
		{"dot", `{"id":"msg.42","data":1}`, "", ErrBadField},
		{"space inside", `{"id":"a b","data":1}`, "", ErrBadField},
		{"non-ASCII", `{"id":"é","data":1}`, "", ErrBadField},
		{"id too long", `{"id":"` + strings.Repeat("i", 129) + `","data":1}`, "", ErrBadField},
		{"negative integer id", `{"id":-7,"data":1}`, "id: -7\nevent: message\ndata: 1\n\n", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := EncodeMessage([]byte(tt.payload), 200)
			if !errors.Is(err, tt.err) {
				t.Fatalf("error %v, want %v", err, tt.err)
			}
			if string(got) != tt.want {
				t.Fatalf("got %q\nwant %q", got, tt.want)
			}
		})
	}
}

// wordcount (Go): counts the words of field `text` in job counters; when a word's count
// reaches config `threshold` (default 3), emits {word, count} to config `target` (default the
// source stream + ":words"). Behaves exactly like plugins/wordcount-rust.
//
// Built by `make plugins`: `wit-bindgen go` writes the bindings next to this package (in the
// build directory), TinyGo is not needed: Go's own wasip1 port builds a reactor
// (-buildmode=c-shared) that wasm-tools turns into a component.
package export_sluice_plugin_handler

import (
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"unicode"

	"wit_component/sluice_plugin_counters"
	"wit_component/sluice_plugin_effects"
	types "wit_component/sluice_plugin_types"

	witTypes "go.bytecodealliance.org/pkg/wit/types"
)

var (
	threshold int64 = 3
	target          = ""
	calls           = 0
)

func init() {
	// The Go GC may run inside cabi_realloc, which traps ("cannot leave component
	// instance", wasmtime#14318). Collect only between calls instead.
	debug.SetGCPercent(-1)
}

func Init(config []witTypes.Tuple2[string, string]) witTypes.Result[witTypes.Unit, string] {
	for _, kv := range config {
		switch kv.F0 {
		case "threshold":
			n, err := strconv.ParseInt(kv.F1, 10, 64)
			if err != nil {
				return witTypes.Err[witTypes.Unit]("threshold must be an integer, got " + strconv.Quote(kv.F1))
			}
			threshold = n
		case "target":
			target = kv.F1
		}
	}
	return witTypes.Ok[witTypes.Unit, string](witTypes.Unit{})
}

func Handle(event types.Event) witTypes.Result[types.Disposition, types.HandlerError] {
	calls++
	if calls%64 == 0 {
		runtime.GC()
	}
	var text []byte
	found := false
	for _, field := range event.Fields {
		if field.F0 == "text" {
			text, found = field.F1, true
		}
	}
	if !found {
		return witTypes.Ok[types.Disposition, types.HandlerError](types.MakeDispositionSkip())
	}
	dest := target
	if dest == "" {
		dest = event.Source + ":words"
	}
	words := strings.FieldsFunc(strings.ToLower(strings.ToValidUTF8(string(text), "\uFFFD")), func(r rune) bool {
		return !unicode.IsLetter(r) && !unicode.IsDigit(r)
	})
	for _, word := range words {
		added := sluice_plugin_counters.CounterAdd(word, 1, witTypes.None[uint32]())
		if added.IsErr() {
			return witTypes.Err[types.Disposition](types.HandlerError{Message: added.Err()})
		}
		if count := added.Ok(); count == threshold {
			fields := []witTypes.Tuple2[string, []uint8]{
				{F0: "word", F1: []byte(word)},
				{F0: "count", F1: []byte(strconv.FormatInt(count, 10))},
			}
			if emitted := sluice_plugin_effects.Emit(dest, fields); emitted.IsErr() {
				return witTypes.Err[types.Disposition](types.HandlerError{Message: emitted.Err()})
			}
		}
	}
	return witTypes.Ok[types.Disposition, types.HandlerError](types.MakeDispositionAck())
}

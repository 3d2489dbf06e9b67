// {{name}}: a sluice plugin. Counts events per value of field `kind` (a job counter) and
// emits {kind, count} to the stream named by config `target` (default: the source stream +
// ":counts").
//
// The package name is fixed by `wit-bindgen go`: the exports of interface
// sluice:plugin/handler are the functions Init and Handle of package
// export_sluice_plugin_handler. ./build.sh generates the bindings and builds the component.
package export_sluice_plugin_handler

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strconv"

	"wit_component/sluice_plugin_config"
	"wit_component/sluice_plugin_counters"
	"wit_component/sluice_plugin_effects"
	"wit_component/sluice_plugin_log"
	types "wit_component/sluice_plugin_types"

	witTypes "go.bytecodealliance.org/pkg/wit/types"
)

type Result = witTypes.Result[types.Disposition, types.HandlerError]

var calls = 0

func init() {
	// Keep these two lines: Go's GC may otherwise run inside cabi_realloc while the host
	// hands over an event, which traps ("cannot leave component instance"). The GC runs
	// between calls instead (see Handle).
	debug.SetGCPercent(-1)
}

func Init(config []witTypes.Tuple2[string, string]) witTypes.Result[witTypes.Unit, string] {
	return witTypes.Ok[witTypes.Unit, string](witTypes.Unit{})
}

func fail(message string) Result {
	return witTypes.Err[types.Disposition](types.HandlerError{Message: message})
}

func Handle(event types.Event) Result {
	if calls++; calls%64 == 0 {
		runtime.GC()
	}
	// Entries, list items and channel messages carry fields; lifecycle events, file changes
	// (see the Python and Rust templates) and kinds added later: not ours.
	if event.Kind != "stream-entry" && event.Kind != "list-item" && event.Kind != "channel-message" {
		return witTypes.Ok[types.Disposition, types.HandlerError](types.MakeDispositionSkip())
	}
	kind := "none"
	for _, field := range event.Fields {
		if field.F0 == "kind" {
			kind = string(field.F1)
		}
	}
	added := sluice_plugin_counters.CounterAdd(kind, 1, witTypes.None[uint32]())
	if added.IsErr() {
		return fail(added.Err())
	}
	count := added.Ok()
	sluice_plugin_log.Log(sluice_plugin_log.Level_Info, fmt.Sprintf("%s #%d", kind, count))
	target := sluice_plugin_config.ConfigGet("target").SomeOr(event.Source + ":counts")
	fields := []witTypes.Tuple2[string, []uint8]{
		{F0: "kind", F1: []byte(kind)},
		{F0: "count", F1: []byte(strconv.FormatInt(count, 10))},
	}
	if emitted := sluice_plugin_effects.Emit(target, fields); emitted.IsErr() {
		return fail(emitted.Err())
	}
	return witTypes.Ok[types.Disposition, types.HandlerError](types.MakeDispositionAck())
}

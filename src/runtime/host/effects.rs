//! `sluice:plugin/effects`: writes are checked against the job's limits (names, sizes,
//! effects per event, the job's allowed streams) and buffered in the call state; the job
//! runner commits them with the event's ack.

use super::super::bindings::sluice::plugin::effects::Host;
use super::HostState;
use crate::model::spec::MAX_DELAY_MS;
use crate::model::{Effect, Field};

impl Host for HostState {
    fn emit(&mut self, stream: String, fields: Vec<Field>) -> Result<(), String> {
        self.buffer_emit(stream, fields, None)
    }

    fn enqueue(&mut self, queue: String, payload: Vec<u8>, delay_ms: u32) -> Result<(), String> {
        let valid = !queue.is_empty()
            && queue.len() <= 64
            && queue
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !valid {
            return Err(self.violate(format!(
                "enqueue: a queue name is 1-64 letters, digits, `_`, `-` or `.`, got {queue:?}"
            )));
        }
        if !self.guest.limits.queue_allowed(&queue) {
            return Err(self.violate(format!(
                "enqueue to `{queue}`: not among the job's allowed queues ({})",
                self.guest.limits.allowed_queues.join(", ")
            )));
        }
        if payload.len() > self.guest.limits.max_payload_bytes {
            return Err(self.violate(format!(
                "enqueue to `{queue}`: a payload of {} bytes exceeds the limit of {}",
                payload.len(),
                self.guest.limits.max_payload_bytes
            )));
        }
        if delay_ms > MAX_DELAY_MS {
            return Err(self.violate(format!(
                "enqueue to `{queue}`: a delay of {delay_ms} ms exceeds the limit of {MAX_DELAY_MS}"
            )));
        }
        self.buffer(
            "enqueue",
            Effect::Enqueue {
                queue,
                payload,
                delay_ms,
            },
        )
    }

    fn emit_capped(
        &mut self,
        stream: String,
        fields: Vec<Field>,
        max_len: u64,
    ) -> Result<(), String> {
        self.buffer_emit(stream, fields, Some(max_len))
    }
}

impl HostState {
    fn buffer_emit(
        &mut self,
        stream: String,
        fields: Vec<Field>,
        max_len: Option<u64>,
    ) -> Result<(), String> {
        let limits = &self.guest.limits;
        let problem = if stream.is_empty() {
            Some("emit: the stream name is empty".to_string())
        } else if stream.len() > limits.max_name_bytes {
            Some(format!(
                "emit: stream name of {} bytes exceeds the limit of {}",
                stream.len(),
                limits.max_name_bytes
            ))
        } else if !limits.stream_allowed(&stream) {
            // One check (the limits' own); the message says which rule refused it.
            Some(if stream == limits.own_source {
                format!(
                    "emit to `{stream}`: that is the job's own source stream (the job would \
                     read what it emits, without end)"
                )
            } else {
                format!(
                    "emit to `{stream}`: not among the job's allowed streams ({})",
                    if limits.allowed_streams.is_empty() {
                        format!("any but `{}*`", limits.reserved_prefix)
                    } else {
                        limits.allowed_streams.join(", ")
                    }
                )
            })
        } else if !crate::model::spec::tag_embeddable(&stream) {
            Some(format!(
                "emit to `{stream}`: a stream name with a brace outside a `{{tag}}` is not \
                 supported (on a Redis Cluster, the keys sluice keeps for it would land in \
                 another slot)"
            ))
        } else if fields.is_empty() {
            Some(format!(
                "emit to `{stream}`: an entry needs at least one field"
            ))
        } else if fields.len() > limits.max_fields {
            Some(format!(
                "emit to `{stream}`: {} fields exceed the limit of {}",
                fields.len(),
                limits.max_fields
            ))
        } else if self.call.effects.len() >= limits.max_effects {
            Some(format!(
                "emit to `{stream}`: more than {} effects for one event",
                limits.max_effects
            ))
        } else {
            let size: usize = fields.iter().map(|(k, v)| k.len() + v.len()).sum();
            (size > limits.max_payload_bytes).then(|| {
                format!(
                    "emit to `{stream}`: {size} bytes of fields exceed the limit of {}",
                    limits.max_payload_bytes
                )
            })
        };
        if let Some(problem) = problem {
            return Err(self.violate(problem));
        }
        if max_len.is_some_and(|m| m > i64::MAX as u64) {
            return Err(self.violate(format!(
                "emit to `{stream}`: a max length over {} is out of range",
                i64::MAX
            )));
        }
        if max_len == Some(0) {
            return Err(self.violate(format!(
                "emit-capped to `{stream}`: a max length of 0 would empty the stream; the least is 1"
            )));
        }
        self.buffer(
            "emit",
            Effect::Emit {
                stream,
                fields,
                max_len,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::Limits;
    use super::super::test_support::state;
    use super::*;

    fn field() -> Vec<Field> {
        vec![("k".into(), b"v".to_vec())]
    }

    #[test]
    fn buffers_valid_emits_in_order() {
        let mut s = state(&[], Limits::default());
        s.emit("a".into(), field()).unwrap();
        s.emit("b".into(), field()).unwrap();
        let streams: Vec<_> = s
            .call
            .effects
            .iter()
            .filter_map(|e| match e {
                Effect::Emit { stream, .. } => Some(stream.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(streams, ["a", "b"]);
        assert!(s.call.violation.is_none());
    }

    #[test]
    fn a_violation_is_remembered_even_if_the_guest_ignores_it() {
        let limits = Limits {
            max_effects: 1,
            ..Limits::default()
        };
        let mut s = state(&[], limits);
        s.emit("a".into(), field()).unwrap();
        let err = s.emit("b".into(), field()).unwrap_err();
        assert!(err.contains("more than 1 effects"), "{err}");
        assert_eq!(s.call.violation.as_deref(), Some(err.as_str()));
        assert_eq!(s.call.effects.len(), 1);
    }

    #[test]
    fn only_allowed_streams_can_be_emitted_to() {
        let limits = Limits {
            allowed_streams: vec!["out".into(), "audit:*".into()],
            ..Limits::default()
        };
        let mut s = state(&[], limits);
        s.emit("out".into(), field()).unwrap();
        s.emit("audit:eu".into(), field()).unwrap();
        let err = s.emit("sluice:jobs".into(), field()).unwrap_err();
        assert!(err.contains("not among the job's allowed streams"), "{err}");
        assert_eq!(s.call.effects.len(), 2);
        assert!(s.call.violation.is_some());
    }

    #[test]
    fn a_stream_whose_tag_holds_a_brace_is_refused() {
        let mut s = state(&[], Limits::default());
        s.emit("out:{eu}".into(), field()).unwrap();
        for name in ["a}b", "x{}y", "{a{b}"] {
            let err = s.emit(name.into(), field()).unwrap_err();
            assert!(err.contains("brace"), "{name}: {err}");
        }
        assert_eq!(s.call.effects.len(), 1);
    }

    #[test]
    fn enqueue_checks_the_queue_name_and_delay() {
        let mut s = state(&[], Limits::default());
        s.enqueue("mail".into(), b"x".to_vec(), 0).unwrap();
        assert!(s.enqueue("bad name".into(), b"x".to_vec(), 0).is_err());
        assert!(s.enqueue("mail".into(), b"x".to_vec(), u32::MAX).is_err());
        assert_eq!(s.call.effects.len(), 1);
    }

    #[test]
    fn emit_capped_records_the_cap() {
        let mut s = state(&[], Limits::default());
        s.emit_capped("out".into(), field(), 100).unwrap();
        assert!(matches!(
            &s.call.effects[0],
            Effect::Emit {
                max_len: Some(100),
                ..
            }
        ));
    }

    #[test]
    fn refuses_bad_names_and_payloads() {
        let limits = Limits {
            max_name_bytes: 4,
            max_payload_bytes: 8,
            ..Limits::default()
        };
        let mut s = state(&[], limits);
        assert!(s.emit("".into(), field()).is_err());
        assert!(s.emit("toolong".into(), field()).is_err());
        assert!(s.emit("ok".into(), vec![]).is_err());
        assert!(s.emit("ok".into(), vec![("k".into(), vec![0; 9])]).is_err());
        assert!(s.call.effects.is_empty());
    }
}

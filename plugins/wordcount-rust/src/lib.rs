//! wordcount (Rust): counts the words of field `text` in job counters; when a word's count
//! reaches config `threshold` (default 3), emits `{word, count}` to config `target` (default
//! the source stream + `:words`). Every language's wordcount plugin behaves the same.

use std::cell::RefCell;

wit_bindgen::generate!({ world: "plugin", path: "../../wit" });

use exports::sluice::plugin::handler::{Disposition, Event, Guest, HandlerError};
use sluice::plugin::counters::counter_add;
use sluice::plugin::effects::emit;

struct Settings {
    threshold: i64,
    target: Option<String>,
}

thread_local! {
    static SETTINGS: RefCell<Settings> = const { RefCell::new(Settings { threshold: 3, target: None }) };
}

struct WordCount;

impl Guest for WordCount {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        let mut settings = Settings {
            threshold: 3,
            target: None,
        };
        for (key, value) in config {
            match key.as_str() {
                "threshold" => {
                    settings.threshold = value
                        .parse()
                        .map_err(|_| format!("threshold must be an integer, got {value:?}"))?
                }
                "target" => settings.target = Some(value),
                _ => {}
            }
        }
        SETTINGS.with(|s| *s.borrow_mut() = settings);
        Ok(())
    }

    fn handle(event: Event) -> Result<Disposition, HandlerError> {
        let Some((_, text)) = event.fields.iter().find(|(k, _)| k == "text") else {
            return Ok(Disposition::Skip);
        };
        let text = String::from_utf8_lossy(text).to_lowercase();
        let (threshold, target) = SETTINGS.with(|s| {
            let s = s.borrow();
            (s.threshold, s.target.clone())
        });
        let target = target.unwrap_or_else(|| format!("{}:words", event.source));
        let error = |message: String| HandlerError { message };
        for word in text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
        {
            let count = counter_add(word, 1, None).map_err(error)?;
            if count == threshold {
                let fields = vec![
                    ("word".to_string(), word.as_bytes().to_vec()),
                    ("count".to_string(), count.to_string().into_bytes()),
                ];
                emit(&target, &fields).map_err(error)?;
            }
        }
        Ok(Disposition::Ack)
    }
}

export!(WordCount);

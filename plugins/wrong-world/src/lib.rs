//! wrong-world: a well-formed component of another world, for the host's load-time checks.

wit_bindgen::generate!({ world: "other", path: "wit" });

struct Other;

impl Guest for Other {
    fn run() -> u32 {
        42
    }
}

export!(Other);

//! `sluice plugin new`: a ready-to-build plugin project in any of our five languages, from the
//! templates beside this module and the WIT package the host was built with.

use std::path::Path;

use anyhow::{Context as _, bail};

/// Languages `plugin new` can start a project in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
    Go,
    C,
}

/// The WIT package, as the host knows it: copied into every new project.
const WIT: [(&str, &str); 10] = [
    ("world.wit", include_str!("../../wit/world.wit")),
    ("types.wit", include_str!("../../wit/types.wit")),
    ("handler.wit", include_str!("../../wit/handler.wit")),
    ("log.wit", include_str!("../../wit/log.wit")),
    ("config.wit", include_str!("../../wit/config.wit")),
    ("clock.wit", include_str!("../../wit/clock.wit")),
    ("effects.wit", include_str!("../../wit/effects.wit")),
    ("kv.wit", include_str!("../../wit/kv.wit")),
    ("counters.wit", include_str!("../../wit/counters.wit")),
    ("batch.wit", include_str!("../../wit/batch.wit")),
];

/// Helpers of `plugins/tools/build-{c,go}.sh`, copied into C and Go projects.
const BUILD_TOOLS: [(&str, &str); 2] = [
    (
        "tools/common.sh",
        include_str!("../../plugins/tools/common.sh"),
    ),
    (
        "tools/crate-src.sh",
        include_str!("../../plugins/tools/crate-src.sh"),
    ),
];

/// Write a ready-to-build plugin project `name` in `lang` into `dir` (which must not exist):
/// the WIT, a small plugin, `build.sh`, `events.jsonl` that `plugin test` passes, a README.
pub fn new_plugin(name: &str, lang: Lang, dir: &Path) -> anyhow::Result<()> {
    // The one name rule, narrowed: the name also becomes a package name in every language
    // (a Rust crate, a Go module, an npm package), which allows no `.`, upper case or
    // leading digit.
    let valid = crate::model::check_name(name).is_ok()
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.contains('.')
        && !name.contains(|c: char| c.is_ascii_uppercase());
    if !valid {
        bail!(
            "a plugin name is 1-64 lower-case letters, digits, `-` or `_`, starting with a letter; got {name:?}"
        );
    }
    if dir.exists() {
        bail!("{} already exists", dir.display());
    }
    let mut files: Vec<(&str, &str)> = vec![
        ("events.jsonl", include_str!("templates/events.jsonl")),
        ("README.md", include_str!("templates/README.md")),
    ];
    files.extend(match lang {
        Lang::Rust => vec![
            ("Cargo.toml", include_str!("templates/rust.Cargo.toml")),
            ("src/lib.rs", include_str!("templates/rust.lib.rs")),
            ("build.sh", include_str!("templates/rust.build.sh")),
        ],
        Lang::Python => vec![
            ("app.py", include_str!("templates/python.app.py")),
            ("build.sh", include_str!("templates/python.build.sh")),
        ],
        Lang::Js => vec![
            ("app.js", include_str!("templates/js.app.js")),
            ("package.json", include_str!("templates/js.package.json")),
            ("build.mjs", include_str!("templates/js.build.mjs")),
            ("build.sh", include_str!("templates/js.build.sh")),
        ],
        Lang::Go => vec![
            ("app.go", include_str!("templates/go.app.go")),
            ("build.sh", include_str!("templates/go.build.sh")),
            (
                "tools/build-go.sh",
                include_str!("../../plugins/tools/build-go.sh"),
            ),
        ],
        Lang::C => vec![
            ("app.c", include_str!("templates/c.app.c")),
            ("build.sh", include_str!("templates/c.build.sh")),
            (
                "tools/build-c.sh",
                include_str!("../../plugins/tools/build-c.sh"),
            ),
        ],
    });
    // The C and Go builds share the scripts `make plugins` uses.
    if matches!(lang, Lang::Go | Lang::C) {
        files.extend(BUILD_TOOLS);
    }
    let lang_name = match lang {
        Lang::Rust => "Rust",
        Lang::Python => "Python",
        Lang::Js => "JavaScript",
        Lang::Go => "Go",
        Lang::C => "C",
    };
    // Python and JavaScript plugins take whole batches in one call: a call into them costs
    // more than most handlers' own work.
    let world = match lang {
        Lang::Python | Lang::Js => "batch-plugin",
        Lang::Rust | Lang::Go | Lang::C => "plugin",
    };
    let fill = |text: &str| {
        text.replace("{{name}}", name)
            .replace("{{crate}}", &name.replace('-', "_"))
            .replace("{{lang}}", lang_name)
            .replace("{{world}}", world)
    };
    for (file, text) in files {
        let path = dir.join(file);
        write_file(&path, &fill(text))?;
        if file.ends_with(".sh") {
            make_executable(&path)?;
        }
    }
    for (file, text) in WIT {
        write_file(&dir.join("wit").join(file), text)?;
    }
    Ok(())
}

fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn make_executable(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut perms = std::fs::metadata(path)?.permissions();
    perms.set_mode(0o755);
    std::fs::set_permissions(path, perms)?;
    Ok(())
}

/work/main/plugins/tools/adapter/target/release/adapter: /work/main/plugins/tools/adapter/src/main.rs

/work/main/plugins/tools/adapter/target/release/deps/adapter-d9199bb5bedfc9a7.d: src/main.rs

/work/main/plugins/tools/adapter/target/release/deps/adapter-d9199bb5bedfc9a7: src/main.rs

src/main.rs:

// `sqlx::migrate!` embeds `migrations/` at build time, but cargo does not know to rebuild when a
// migration is added or changed (what `sqlx migrate build-script` generates).
fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}

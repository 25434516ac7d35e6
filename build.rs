//! The migrations are embedded in the binary (`include_dir!`), which tracks
//! the files it read but not the folder: without this, a migration added to
//! `supabase/migrations/` would not be in the next build until some Rust
//! file changed.

fn main() {
    println!("cargo::rerun-if-changed=supabase/migrations");
}

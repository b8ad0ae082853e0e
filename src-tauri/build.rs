//! Tauri's build step: the app context (config, icons, capabilities) and the
//! permission for the one command the dashboard pages may call.

fn main() {
    tauri_build::try_build(
        tauri_build::Attributes::new().app_manifest(
            // Declaring the app's commands makes each one need a permission
            // (`allow-open-dashboard`), granted only in capabilities/.
            tauri_build::AppManifest::new().commands(&["open_dashboard"]),
        ),
    )
    .expect("tauri build step failed (see the message above; icons and tauri.conf.json live in src-tauri/)");
}

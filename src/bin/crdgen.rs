//! Writes the CustomResourceDefinitions as YAML, one file each, into the
//! directory given (`crds/` is generated so); without one, prints them all.

fn main() -> std::io::Result<()> {
    let files = whatsapp_operator::api::crd_files();
    match std::env::args_os().nth(1) {
        Some(dir) => {
            let dir = std::path::PathBuf::from(dir);
            for (name, yaml) in files {
                std::fs::write(dir.join(name), yaml)?;
            }
        }
        None => files.iter().for_each(|(_, yaml)| print!("{yaml}")),
    }
    Ok(())
}

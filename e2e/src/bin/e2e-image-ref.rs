//! `e2e-image-ref IMAGE`: how `e2e/kind.sh` reads `E2E_IMAGE`. Prints `key=value` lines
//! (`repository`, `tag`, `reference`, `retagged`) for the image the kind suite builds, loads and
//! installs, or exits 2 naming what is wrong with the reference. The parsing is
//! [`eventstream_e2e::kind::ImageRef`], unit-tested there; a shell split of `name:tag` gets
//! untagged images and registries with a port wrong.

use std::process::ExitCode;

use eventstream_e2e::kind::ImageRef;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [image] = args.as_slice() else {
        eprintln!("usage: e2e-image-ref IMAGE");
        return ExitCode::from(2);
    };
    match ImageRef::parse(image).and_then(|r| r.for_kind(image)) {
        Ok(kind) => {
            print!("{}", kind.shell_lines());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

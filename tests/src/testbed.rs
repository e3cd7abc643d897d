//! What `tests/provision.sh` installed, read from `$RES_SCALE_CACHE/testbed.env`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, Clone)]
pub struct Testbed {
    /// The Debian sid rootfs with Asterisk 22 installed.
    pub rootfs: PathBuf,
    pub consul: PathBuf,
    pub pjsua_python: PathBuf,
    /// Python with the third-party ARI clients (asyncari, aioari).
    pub ari_python: PathBuf,
    /// The same rootfs imported as a Docker image, when a Docker engine answered.
    pub image: Option<String>,
    /// The res_scale.so under test.
    pub module: PathBuf,
}

impl Testbed {
    pub fn load() -> Testbed {
        let cache = std::env::var("RES_SCALE_CACHE").unwrap_or_else(|_| "/var/cache/res_scale".into());
        let env_file = Path::new(&cache).join("testbed.env");
        let text = std::fs::read_to_string(&env_file).unwrap_or_else(|e| panic!("cannot read {}: {e}. Run `bash tests/provision.sh` (or `make test`) first.", env_file.display()));
        let vars: HashMap<&str, &str> = text.lines().filter(|l| !l.trim_start().starts_with('#')).filter_map(|l| l.split_once('=')).map(|(k, v)| (k.trim(), v.trim().trim_matches('"'))).collect();
        let get = |k: &str| vars.get(k).copied().unwrap_or_else(|| panic!("{} lacks {k}", env_file.display()));
        let image = Some(get("RES_SCALE_ASTERISK_IMAGE").to_string()).filter(|s| !s.is_empty());
        let module = std::env::var("RES_SCALE_MODULE").map(PathBuf::from).unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-module/res_scale.so"));
        assert!(module.is_file(), "module under test {} not found: run `make test`, or set RES_SCALE_MODULE", module.display());
        Testbed {
            rootfs: PathBuf::from(get("RES_SCALE_ROOTFS")),
            consul: PathBuf::from(get("RES_SCALE_CONSUL")),
            pjsua_python: PathBuf::from(get("RES_SCALE_PJSUA_PYTHON")),
            ari_python: PathBuf::from(get("RES_SCALE_ARI_PYTHON")),
            image,
            module,
        }
    }

    /// Docker when an image exists and the engine answers, unless RES_SCALE_RUNNER=chroot.
    pub fn use_docker(&self) -> bool {
        match std::env::var("RES_SCALE_RUNNER").as_deref() {
            Ok("chroot") => false,
            Ok("docker") => true,
            _ => self.image.is_some() && Command::new("docker").arg("info").output().map(|o| o.status.success()).unwrap_or(false),
        }
    }
}

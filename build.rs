//! Builds the FFI layer: bindgen over `asterisk-headers/wrapper.h` and the C shim that expands
//! Asterisk's module-registration macros.
//!
//! Headers are looked for, in order: `ASTERISK_INCLUDE_DIR`, an installed Asterisk
//! (`/usr/include/asterisk.h`), then a cache folder that `asterisk-headers/fetch-headers.sh` fills
//! from Debian's `asterisk-dev` package.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const HELP: &str = "res_scale needs the headers of the Asterisk 22 it will be loaded into.\n\
    Either install them (Debian: `apt-get install asterisk-dev`, from a release that ships \
    Asterisk 22), or set ASTERISK_INCLUDE_DIR to a folder that holds asterisk.h and asterisk/ \
    (for a source build: <asterisk source>/include).";

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let shim_dir = manifest.join("asterisk-headers");
    for file in ["wrapper.h", "shim.h", "shim.c", "contacts.c", "contact_store.c", "devstate.c", "mwi.c", "fetch-headers.sh", "host-mirror.sh"] {
        println!("cargo:rerun-if-changed={}", shim_dir.join(file).display());
    }
    println!("cargo:rerun-if-env-changed=ASTERISK_INCLUDE_DIR");

    // Never unmapped: Asterisk may still call into the library after unload (a Stasis callback
    // copied before the app was deactivated, a CLI entry it keeps listed, threads given up on
    // at shutdown, thread-key destructors of the TLS library), and a module load after an
    // unload finds the same code and statics.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");

    let include = find_headers(&manifest);
    println!("cargo:warning=building against Asterisk headers in {}", include.display());

    cc::Build::new()
        .file(shim_dir.join("shim.c"))
        .file(shim_dir.join("contacts.c"))
        .file(shim_dir.join("contact_store.c"))
        .file(shim_dir.join("devstate.c"))
        .file(shim_dir.join("mwi.c"))
        .include(&include)
        .include(&shim_dir)
        .define("_GNU_SOURCE", None)
        .warnings(true)
        // Asterisk's own headers trip this one (`static int force_inline ...`).
        .flag_if_supported("-Wno-old-style-declaration")
        .flag_if_supported("-Wno-ignored-qualifiers")
        // Callbacks of sorcery and ao2 have fixed signatures; most use only some arguments.
        .flag_if_supported("-Wno-unused-parameter")
        // The shim holds the ELF constructor that registers the module; nothing in Rust refers
        // to it, so without whole-archive the linker would drop it.
        .link_lib_modifier("+whole-archive")
        .compile("res_scale_shim");

    let bindings = bindgen::Builder::default()
        .header(shim_dir.join("wrapper.h").to_string_lossy())
        .clang_arg(format!("-I{}", include.display()))
        .clang_arg(format!("-I{}", shim_dir.display()))
        .clang_arg("-D_GNU_SOURCE")
        // RAII_VAR uses clang blocks.
        .clang_arg("-fblocks")
        // Turns AST_INLINE_API functions into prototypes; the asterisk binary exports them all.
        .clang_arg("-DDISABLE_INLINE")
        .allowlist_function("ast_log|ast_cli|__ast_cli_register_multiple|ast_cli_unregister_multiple")
        .allowlist_function("ast_config_destroy|ast_category_browse_filtered|ast_category_first|ast_category_get_name")
        .allowlist_function("ast_eid_to_str|ast_get_version|ast_debug_get_by_module")
        .allowlist_function("stasis_app_register|stasis_app_unregister|stasis_app_is_registered")
        .allowlist_function("ast_json_typeof|ast_json_object_iter|ast_json_object_iter_next|ast_json_object_iter_key|ast_json_object_iter_value")
        .allowlist_function("ast_json_object_get|ast_json_string_get|ast_json_integer_get|ast_json_real_get|ast_json_array_size|ast_json_array_get")
        // Only the test-hooks build injects events (scale test events).
        .allowlist_function("stasis_app_send|ast_json_load_string|ast_json_unref|ast_json_deep_copy|ast_json_object_set|ast_json_integer_create")
        .allowlist_function("ast_shutting_down")
        .allowlist_function("res_scale_.*")
        .allowlist_var("ast_eid_default|ast_config_AST_SYSTEM_NAME|ast_config_AST_CONFIG_DIR")
        .allowlist_type("ast_module_load_result|ast_cli_command|res_scale_.*")
        .allowlist_var("__LOG_.*")
        .default_enum_style(bindgen::EnumVariation::Consts)
        .prepend_enum_name(false)
        .layout_tests(false)
        .generate()
        .unwrap_or_else(|e| panic!("bindgen failed on {}: {e}\n{HELP}", include.display()));
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("bindings.rs");
    bindings.write_to_file(&out).expect("writing bindings.rs");
}

fn has_headers(dir: &Path) -> bool {
    dir.join("asterisk.h").is_file() && dir.join("asterisk").join("module.h").is_file()
}

fn find_headers(manifest: &Path) -> PathBuf {
    if let Some(dir) = env::var_os("ASTERISK_INCLUDE_DIR").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        if has_headers(&dir) {
            return dir;
        }
        panic!("ASTERISK_INCLUDE_DIR={} does not hold asterisk.h and asterisk/module.h.\n{HELP}", dir.display());
    }
    let system = Path::new("/usr/include");
    if has_headers(system) {
        return system.to_path_buf();
    }
    let cached = manifest.join("target").join("asterisk-headers").join("include");
    if has_headers(&cached) {
        return cached;
    }
    println!("cargo:warning=no Asterisk headers installed; fetching Debian's asterisk-dev into {}", cached.display());
    let status = Command::new("bash").arg(manifest.join("asterisk-headers").join("fetch-headers.sh")).arg(&cached).status();
    match status {
        Ok(s) if s.success() && has_headers(&cached) => cached,
        Ok(s) => panic!("asterisk-headers/fetch-headers.sh failed ({s}).\n{HELP}"),
        Err(e) => panic!("could not run asterisk-headers/fetch-headers.sh: {e}\n{HELP}"),
    }
}

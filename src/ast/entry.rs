//! The three functions the C shim's module info points at. Each runs through the panic guard.

use crate::ast::guard::guarded;
use crate::lifecycle;
use crate::sys;

#[no_mangle]
pub extern "C" fn rs_scale_load() -> sys::ast_module_load_result {
    guarded("module load", sys::AST_MODULE_LOAD_DECLINE, || match lifecycle::load() {
        Ok(()) => sys::AST_MODULE_LOAD_SUCCESS,
        Err(()) => sys::AST_MODULE_LOAD_DECLINE,
    })
}

#[no_mangle]
pub extern "C" fn rs_scale_unload() -> std::os::raw::c_int {
    guarded("module unload", -1, || {
        lifecycle::unload();
        0
    })
}

#[no_mangle]
pub extern "C" fn rs_scale_reload() -> std::os::raw::c_int {
    // The loader reports a non-zero result as a failed reload.
    guarded("module reload", -1, || match lifecycle::reload() {
        Ok(()) => 0,
        Err(()) => -1,
    })
}

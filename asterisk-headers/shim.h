/*
 * The C side of res_scale: only what Rust cannot express, because Asterisk provides it as a
 * macro (module registration, AST_MODULE_SELF, DEBUG_ATLEAST, pointer-valued sentinels).
 */
#ifndef RES_SCALE_SHIM_H
#define RES_SCALE_SHIM_H

struct ast_module;
struct ast_config;

/* The module handle the loader gave us (AST_MODULE_SELF). NULL before registration. */
struct ast_module *res_scale_self(void);

/* Non-zero when `core set debug` (globally or for res_scale) asks for debug output. */
int res_scale_debug_enabled(void);

/* Outcome of res_scale_config_load(). */
enum res_scale_config_status {
	RES_SCALE_CONFIG_OK = 0,        /* *out holds the config; free it with ast_config_destroy() */
	RES_SCALE_CONFIG_MISSING = 1,   /* no such file */
	RES_SCALE_CONFIG_UNCHANGED = 2, /* only_if_changed was set and the file did not change */
	RES_SCALE_CONFIG_INVALID = 3,   /* the file could not be parsed */
};

/* ast_config_load2() with its sentinel pointers turned into a status. */
enum res_scale_config_status res_scale_config_load(const char *filename, int only_if_changed,
	struct ast_config **out);

#endif

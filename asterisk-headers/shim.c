/*
 * Module registration for res_scale. AST_MODULE_INFO expands to a static ast_module_info plus an
 * ELF constructor that hands it to the loader during dlopen(); the loader never looks up symbols.
 * The three entry points are implemented in Rust (src/lifecycle.rs).
 */
#define AST_MODULE "res_scale"
#define AST_MODULE_SELF_SYM __internal_res_scale_self

#include "asterisk.h"
#include "asterisk/module.h"
#include "asterisk/logger.h"
#include "asterisk/config.h"
#include "asterisk/utils.h"
#include "asterisk/astobj2.h"

#include "shim.h"

enum ast_module_load_result rs_scale_load(void);
int rs_scale_unload(void);
int rs_scale_reload(void);

static enum ast_module_load_result load_module(void)
{
	return rs_scale_load();
}

static int unload_module(void)
{
	return rs_scale_unload();
}

static int reload_module(void)
{
	return rs_scale_reload();
}

struct ast_module *res_scale_self(void)
{
	return AST_MODULE_SELF;
}

char *res_scale_strdup(const char *s)
{
	return ast_strdup(s);
}

void *res_scale_app_token(void)
{
	return ao2_alloc_options(1, NULL, AO2_ALLOC_OPT_LOCK_NOLOCK);
}

int res_scale_debug_enabled(void)
{
	return DEBUG_ATLEAST(1);
}

enum res_scale_config_status res_scale_config_load(const char *filename, int only_if_changed,
	struct ast_config **out)
{
	struct ast_flags flags = { only_if_changed ? CONFIG_FLAG_FILEUNCHANGED : 0 };
	struct ast_config *cfg = ast_config_load2(filename, AST_MODULE, flags);

	*out = NULL;
	if (cfg == CONFIG_STATUS_FILEMISSING) {
		return RES_SCALE_CONFIG_MISSING;
	}
	if (cfg == CONFIG_STATUS_FILEUNCHANGED) {
		return RES_SCALE_CONFIG_UNCHANGED;
	}
	if (cfg == CONFIG_STATUS_FILEINVALID) {
		return RES_SCALE_CONFIG_INVALID;
	}
	*out = cfg;
	return RES_SCALE_CONFIG_OK;
}

AST_MODULE_INFO(ASTERISK_GPL_KEY, AST_MODFLAG_LOAD_ORDER, "Pool of Asterisk nodes working as one",
	.support_level = AST_MODULE_SUPPORT_EXTENDED,
	.load = load_module,
	.unload = unload_module,
	.reload = reload_module,
	.load_pri = AST_MODPRI_APP_DEPEND,
	.requires = "res_stasis,res_pjsip",
);

/*
 * What bindgen reads. The two defines must come before asterisk.h: an external module that
 * lacks AST_MODULE_SELF_SYM does not compile, and both must match the shim's.
 */
#define AST_MODULE "res_scale"
#define AST_MODULE_SELF_SYM __internal_res_scale_self

#include "asterisk.h"
#include "asterisk/module.h"
#include "asterisk/logger.h"
#include "asterisk/cli.h"
#include "asterisk/config.h"
#include "asterisk/options.h"
#include "asterisk/paths.h"
#include "asterisk/utils.h"
#include "asterisk/ast_version.h"
#include "asterisk/json.h"
#include "asterisk/stasis_app.h"

#include "shim.h"

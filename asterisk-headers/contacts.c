/*
 * PJSIP contacts for res_scale: create, refresh and delete contacts of existing AORs, and a
 * sorcery observer that reports contact changes to Rust (src/ast/contacts.rs).
 *
 * Why this is C: res_pjsip.h cannot be parsed without pjproject's headers (which asterisk-dev
 * does not ship), so the few location functions are declared here with opaque types; and the
 * locking and variable-list helpers are macros (ao2_lock, ao2_ref, ast_variable_new).
 * No struct of res_pjsip is ever dereferenced: fields are read and written through sorcery's
 * generic object sets, so nothing here depends on their layout.
 */
#define AST_MODULE "res_scale"
#define AST_MODULE_SELF_SYM __internal_res_scale_self

#include "asterisk.h"
#include "asterisk/astobj2.h"
#include "asterisk/config.h"
#include "asterisk/lock.h"
#include "asterisk/sorcery.h"
#include "asterisk/taskpool.h"
#include "asterisk/taskprocessor.h"
#include "asterisk/threadpool.h"
#include "asterisk/time.h"
#include "asterisk/utils.h"

#include "shim.h"

/* From res_pjsip.h (exported by res_pjsip.so), with opaque types. */
struct ast_sip_aor;
struct ast_sip_contact;
struct ast_sip_endpoint;
struct ast_sorcery *ast_sip_get_sorcery(void);
struct ast_sip_aor *ast_sip_location_retrieve_aor(const char *aor_name);
struct ast_sip_contact *ast_sip_location_retrieve_contact(const char *contact_name);
struct ast_sip_contact *ast_sip_location_create_contact(struct ast_sip_aor *aor, const char *uri,
	struct timeval expiration_time, const char *path_info, const char *user_agent,
	const char *via_addr, int via_port, const char *call_id, int prune_on_boot,
	struct ast_sip_endpoint *endpoint);
int ast_sip_location_update_contact(struct ast_sip_contact *contact);
int ast_sip_location_delete_contact(struct ast_sip_contact *contact);

/* Implemented in Rust: one contact created, updated or deleted by anyone on this node. */
void rs_scale_contact_changed(enum res_scale_contact_change change,
	const struct res_scale_contact_fields *fields);

/* The contact id location.c uses: "<aor>;@<md5 of the URI>", cut where location.c cuts it. */
#define CONTACT_ID_SIZE (MAX_OBJECT_FIELD * 2 + 3)

static void contact_id(char *out, const char *aor, const char *uri)
{
	char hash[33];

	ast_md5_hash(hash, uri);
	snprintf(out, CONTACT_ID_SIZE, "%s;@%s", aor, hash);
}

static int set_var(struct ast_variable **list, const char *name, const char *value)
{
	struct ast_variable *var = ast_variable_new(name, value, "");

	if (!var) {
		return -1;
	}
	var->next = *list;
	*list = var;
	return 0;
}

/* Reads a contact's fields by name into *f; the strings live in the returned list (free it
 * with ast_variables_destroy). */
static struct ast_variable *read_fields(const void *object, struct res_scale_contact_fields *f)
{
	struct ast_variable *vars = ast_sorcery_objectset_create2(ast_sip_get_sorcery(), object,
		AST_HANDLER_ONLY_STRING);
	struct ast_variable *v;

	*f = (struct res_scale_contact_fields) {
		.id = ast_sorcery_object_get_id(object),
		.uri = "", .path = "", .user_agent = "", .via_addr = "", .call_id = "", .endpoint = "",
	};
	for (v = vars; v; v = v->next) {
		if (!strcmp(v->name, "uri")) {
			f->uri = v->value;
		} else if (!strcmp(v->name, "path")) {
			f->path = v->value;
		} else if (!strcmp(v->name, "user_agent")) {
			f->user_agent = v->value;
		} else if (!strcmp(v->name, "via_addr")) {
			f->via_addr = v->value;
		} else if (!strcmp(v->name, "call_id")) {
			f->call_id = v->value;
		} else if (!strcmp(v->name, "endpoint")) {
			f->endpoint = v->value;
		} else if (!strcmp(v->name, "expiration_time")) {
			f->expires = strtoll(v->value, NULL, 10);
		} else if (!strcmp(v->name, "via_port")) {
			f->via_port = atoi(v->value);
		}
	}
	return vars;
}

/* With the AOR locked: the contact with this id (a reference) if there is one and `ours`
 * agrees that res_scale may change it. */
static enum res_scale_contact_result find_contact(const char *id, res_scale_contact_ours ours,
	void *ours_data, struct ast_sip_contact **found)
{
	struct res_scale_contact_fields f;
	struct ast_variable *vars;
	int mine;

	*found = ast_sip_location_retrieve_contact(id);
	if (!*found) {
		return RES_SCALE_CONTACT_ABSENT;
	}
	vars = read_fields(*found, &f);
	mine = ours(ours_data, &f);
	ast_variables_destroy(vars);
	if (!mine) {
		ao2_ref(*found, -1);
		*found = NULL;
		return RES_SCALE_CONTACT_REGISTERED_HERE;
	}
	return RES_SCALE_CONTACT_APPLIED;
}

/* A refresh: a copy of the contact with the new values, stored through sorcery. */
static int refresh_contact(struct ast_sorcery *sorcery, struct ast_sip_contact *contact,
	const struct res_scale_contact_fields *f)
{
	struct ast_sip_contact *copy = ast_sorcery_copy(sorcery, contact);
	struct ast_variable *vars = NULL;
	char expires[32];
	char via_port[16];
	int res = -1;

	if (!copy) {
		return -1;
	}
	snprintf(expires, sizeof(expires), "%lld", f->expires);
	snprintf(via_port, sizeof(via_port), "%d", f->via_port);
	/* Like the registrar: a refresh without Path keeps the one the contact has. */
	if ((ast_strlen_zero(f->path) || !set_var(&vars, "path", f->path))
		&& !set_var(&vars, "expiration_time", expires)
		&& !set_var(&vars, "user_agent", f->user_agent)
		&& !set_var(&vars, "via_addr", f->via_addr)
		&& !set_var(&vars, "via_port", via_port)
		&& !set_var(&vars, "call_id", f->call_id)
		&& !ast_sorcery_objectset_apply(sorcery, copy, vars)) {
		res = ast_sip_location_update_contact(copy);
	}
	ast_variables_destroy(vars);
	ao2_ref(copy, -1);
	return res;
}

enum res_scale_contact_result res_scale_contact_upsert(const char *aor_name,
	const struct res_scale_contact_fields *f, res_scale_contact_ours ours, void *ours_data)
{
	struct ast_sorcery *sorcery = ast_sip_get_sorcery();
	struct ast_sip_aor *aor = ast_sip_location_retrieve_aor(aor_name);
	struct ast_sip_contact *contact;
	enum res_scale_contact_result result;
	char id[CONTACT_ID_SIZE];

	if (!aor) {
		return RES_SCALE_CONTACT_NO_AOR;
	}
	contact_id(id, aor_name, f->uri);
	/* The registrar's lock: a REGISTER for this AOR on this node waits while we change it. */
	ao2_lock(aor);
	result = find_contact(id, ours, ours_data, &contact);
	if (result == RES_SCALE_CONTACT_APPLIED) {
		result = refresh_contact(sorcery, contact, f) ? RES_SCALE_CONTACT_FAILED : RES_SCALE_CONTACT_UPDATED;
	} else if (result == RES_SCALE_CONTACT_ABSENT) {
		/* prune_on_boot = 1: a restarted node forgets what it learned from others. */
		contact = ast_sip_location_create_contact(aor, f->uri, ast_tv(f->expires, 0), f->path,
			f->user_agent, f->via_addr, f->via_port, f->call_id, 1, NULL);
		result = contact ? RES_SCALE_CONTACT_CREATED : RES_SCALE_CONTACT_FAILED;
	}
	ao2_unlock(aor);
	ao2_cleanup(contact);
	ao2_ref(aor, -1);
	return result;
}

/* Deletes (if `delete`) or only checks the contact with this URI, under the AOR's lock. */
static enum res_scale_contact_result remove_or_check(const char *aor_name, const char *uri,
	res_scale_contact_ours ours, void *ours_data, int delete)
{
	struct ast_sip_aor *aor = ast_sip_location_retrieve_aor(aor_name);
	struct ast_sip_contact *contact;
	enum res_scale_contact_result result;
	char id[CONTACT_ID_SIZE];

	if (!aor) {
		return RES_SCALE_CONTACT_NO_AOR;
	}
	contact_id(id, aor_name, uri);
	ao2_lock(aor);
	result = find_contact(id, ours, ours_data, &contact);
	if (result == RES_SCALE_CONTACT_APPLIED && delete) {
		result = ast_sip_location_delete_contact(contact) ? RES_SCALE_CONTACT_FAILED : RES_SCALE_CONTACT_REMOVED;
	}
	ao2_unlock(aor);
	ao2_cleanup(contact);
	ao2_ref(aor, -1);
	return result;
}

enum res_scale_contact_result res_scale_contact_remove(const char *aor_name, const char *uri,
	res_scale_contact_ours ours, void *ours_data)
{
	return remove_or_check(aor_name, uri, ours, ours_data, 1);
}

enum res_scale_contact_result res_scale_contact_check(const char *aor_name, const char *uri,
	res_scale_contact_ours ours, void *ours_data)
{
	return remove_or_check(aor_name, uri, ours, ours_data, 0);
}

/*
 * The serializer sorcery runs the contact observers on (sorcery/contact-...): sorcery does not
 * say which it is, so the first observer call takes it from its own thread. A reference is held
 * while observing; the lock keeps res_scale_contact_backlog() off a queue being let go.
 */
AST_MUTEX_DEFINE_STATIC(observer_queue_lock);
static struct ast_taskprocessor *observer_queue;

static void note_observer_queue(void)
{
	struct ast_taskprocessor *current;

	ast_mutex_lock(&observer_queue_lock);
	if (!observer_queue) {
		current = ast_taskpool_serializer_get_current();
		if (!current) {
			current = ast_threadpool_serializer_get_current();
		}
		if (current) {
			observer_queue = ast_taskprocessor_get(ast_taskprocessor_name(current), TPS_REF_IF_EXISTS);
		}
	}
	ast_mutex_unlock(&observer_queue_lock);
}

static void forget_observer_queue(void)
{
	ast_mutex_lock(&observer_queue_lock);
	observer_queue = ast_taskprocessor_unreference(observer_queue);
	ast_mutex_unlock(&observer_queue_lock);
}

long res_scale_contact_backlog(void)
{
	long size = -1;

	ast_mutex_lock(&observer_queue_lock);
	if (observer_queue) {
		size = ast_taskprocessor_size(observer_queue);
	}
	ast_mutex_unlock(&observer_queue_lock);
	return size;
}

/* Hands a contact's fields to Rust. Runs on sorcery's serializer. */
static void report(enum res_scale_contact_change change, const void *object)
{
	struct res_scale_contact_fields f;
	struct ast_variable *vars = read_fields(object, &f);

	rs_scale_contact_changed(change, &f);
	ast_variables_destroy(vars);
}

static void contact_created(const void *object)
{
	note_observer_queue();
	report(RES_SCALE_CONTACT_CREATE, object);
}

static void contact_updated(const void *object)
{
	report(RES_SCALE_CONTACT_UPDATE, object);
}

static void contact_deleted(const void *object)
{
	report(RES_SCALE_CONTACT_DELETE, object);
}

static const struct ast_sorcery_observer contact_observer = {
	.created = contact_created,
	.updated = contact_updated,
	.deleted = contact_deleted,
};

/* Whether the observer is added: sorcery would add it twice, and removal unlinks only one. */
static int observing;

int res_scale_contact_observe(int on)
{
	if (on && !observing) {
		if (ast_sorcery_observer_add(ast_sip_get_sorcery(), "contact", &contact_observer)) {
			return -1;
		}
		observing = 1;
	} else if (!on && observing) {
		ast_sorcery_observer_remove(ast_sip_get_sorcery(), "contact", &contact_observer);
		forget_observer_queue();
		observing = 0;
	}
	return 0;
}

void res_scale_contact_report_all(void)
{
	struct ao2_container *all = ast_sorcery_retrieve_by_fields(ast_sip_get_sorcery(), "contact",
		AST_RETRIEVE_FLAG_MULTIPLE | AST_RETRIEVE_FLAG_ALL, NULL);
	struct ao2_iterator i;
	void *object;

	if (!all) {
		return;
	}
	i = ao2_iterator_init(all, 0);
	while ((object = ao2_iterator_next(&i))) {
		report(RES_SCALE_CONTACT_EXISTS, object);
		ao2_ref(object, -1);
	}
	ao2_iterator_destroy(&i);
	ao2_ref(all, -1);
}

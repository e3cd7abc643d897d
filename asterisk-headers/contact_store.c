/*
 * An indexed store for PJSIP contacts (sorcery wizard "res_scale"), put in place of the
 * `memory` wizard while res_scale applies registrations (src/ast/contact_store.rs).
 *
 * Why: every node holds every phone of the pool, and res_sorcery_memory keeps its objects in a
 * hash table of 53 buckets that never grows, so each create, update, delete and lookup by id
 * walks n/53 objects (about 1,900 at 100,000 contacts, each one a cache miss), and each lookup
 * of an AOR's contacts (by id prefix "<aor>;@": every REGISTER, every dial) walks all n. Here
 * the contacts are in a red-black tree sorted by id: O(log n) by id and O(log n + k) by prefix.
 * Field and regex searches walk everything, as they do in `memory`.
 *
 * Swapping stores while Asterisk runs: sorcery calls every mapped wizard for a create, update or
 * delete and asks them in order for a lookup, so while both are mapped both see every change.
 * Install: map ours first, copy memory's objects in, check each against memory (a change made
 * meanwhile wins), then unmap memory. Uninstall is the same the other way round, so contacts
 * this node's own phones registered stay where Asterisk expects them after res_scale goes.
 * Nothing is copied through sorcery's create: observers would see contacts appear.
 */
#define AST_MODULE "res_scale"
#define AST_MODULE_SELF_SYM __internal_res_scale_self

#include "asterisk.h"
#include "asterisk/astobj2.h"
#include "asterisk/config.h"
#include "asterisk/sorcery.h"
#include "asterisk/strings.h"

#include <regex.h>

#include "shim.h"

struct ast_sorcery *ast_sip_get_sorcery(void);

#define OBJECT_TYPE "contact"
#define OURS "res_scale"
#define MEMORY "memory"

static int store_create(const struct ast_sorcery *sorcery, void *data, void *object)
{
	/* DUPS_REJECT: a second object with an id already held is refused, as memory does. */
	return ao2_link(data, object) ? 0 : -1;
}

static void *store_retrieve_id(const struct ast_sorcery *sorcery, void *data, const char *type, const char *id)
{
	return ao2_find(data, id, OBJ_SEARCH_KEY);
}

static int link_into(void *obj, void *arg, void *data, int flags)
{
	ao2_link(data, obj);
	return 0;
}

static void store_retrieve_prefix(const struct ast_sorcery *sorcery, void *data, const char *type,
	struct ao2_container *objects, const char *prefix, const size_t prefix_len)
{
	/* The tree's sort function compares strlen(key) characters: the key must end there. */
	char *key = ast_strndup(prefix, prefix_len);

	if (!key) {
		return;
	}
	ao2_callback_data(data, OBJ_SEARCH_PARTIAL_KEY | OBJ_MULTIPLE | OBJ_NODATA, link_into, key, objects);
	ast_free(key);
}

struct search {
	const struct ast_sorcery *sorcery;
	const struct ast_variable *fields; /* NULL: every object */
	regex_t *regex;                    /* or: objects whose id matches */
	struct ao2_container *into;        /* NULL: the first match is the answer */
};

static int matches(void *obj, void *arg, int flags)
{
	struct search *s = arg;
	struct ast_variable *objset;
	int match;

	if (s->regex) {
		match = !regexec(s->regex, ast_sorcery_object_get_id(obj), 0, NULL, 0);
	} else if (s->fields) {
		objset = ast_sorcery_objectset_create(s->sorcery, obj);
		match = objset && ast_variable_lists_match(objset, s->fields, 0);
		ast_variables_destroy(objset);
	} else {
		match = 1;
	}
	if (!match) {
		return 0;
	}
	if (s->into) {
		ao2_link(s->into, obj);
		return 0;
	}
	return CMP_MATCH | CMP_STOP;
}

static void *store_retrieve_fields(const struct ast_sorcery *sorcery, void *data, const char *type, const struct ast_variable *fields)
{
	struct search s = { .sorcery = sorcery, .fields = fields };

	/* Like memory: a search by fields needs some field. */
	return fields ? ao2_callback(data, 0, matches, &s) : NULL;
}

static void store_retrieve_multiple(const struct ast_sorcery *sorcery, void *data, const char *type,
	struct ao2_container *objects, const struct ast_variable *fields)
{
	struct search s = { .sorcery = sorcery, .fields = fields, .into = objects };

	ao2_callback(data, OBJ_NODATA, matches, &s);
}

static void store_retrieve_regex(const struct ast_sorcery *sorcery, void *data, const char *type,
	struct ao2_container *objects, const char *regex)
{
	regex_t expression;
	struct search s = { .sorcery = sorcery, .regex = &expression, .into = objects };

	if (regcomp(&expression, ast_strlen_zero(regex) ? "." : regex, REG_EXTENDED | REG_NOSUB)) {
		return;
	}
	ao2_callback(data, OBJ_NODATA, matches, &s);
	regfree(&expression);
}

static int store_update(const struct ast_sorcery *sorcery, void *data, void *object)
{
	void *existing;

	ao2_wrlock(data);
	existing = ao2_find(data, ast_sorcery_object_get_id(object), OBJ_SEARCH_KEY | OBJ_UNLINK | OBJ_NOLOCK);
	if (existing || ast_sorcery_update_or_create_on_update_miss) {
		ao2_link_flags(data, object, OBJ_NOLOCK);
	}
	ao2_unlock(data);
	ao2_cleanup(existing);
	return existing || ast_sorcery_update_or_create_on_update_miss ? 0 : -1;
}

static int store_delete(const struct ast_sorcery *sorcery, void *data, void *object)
{
	void *existing = ao2_find(data, ast_sorcery_object_get_id(object), OBJ_SEARCH_KEY | OBJ_UNLINK);

	ao2_cleanup(existing);
	return existing ? 0 : -1;
}

static void *store_open(const char *data)
{
	return ao2_container_alloc_rbtree(AO2_ALLOC_OPT_LOCK_RWLOCK, AO2_CONTAINER_ALLOC_OPT_DUPS_REJECT,
		ast_sorcery_object_id_sort, NULL);
}

static void store_close(void *data)
{
	ao2_ref(data, -1);
}

static const struct ast_sorcery_wizard store = {
	.name = OURS,
	.open = store_open,
	.create = store_create,
	.retrieve_id = store_retrieve_id,
	.retrieve_prefix = store_retrieve_prefix,
	.retrieve_regex = store_retrieve_regex,
	.retrieve_fields = store_retrieve_fields,
	.retrieve_multiple = store_retrieve_multiple,
	.update = store_update,
	.delete = store_delete,
	.close = store_close,
};

/* Our mapping's container while installed (sorcery owns it), else NULL. */
static struct ao2_container *installed;

/* The one wizard mapped to contacts, if it is the one called `name`. */
static int only_mapping_is(struct ast_sorcery *sorcery, const char *name)
{
	struct ast_sorcery_wizard *wizard;
	void *data;
	int is;

	if (ast_sorcery_get_wizard_mapping_count(sorcery, OBJECT_TYPE) != 1
		|| ast_sorcery_get_wizard_mapping(sorcery, OBJECT_TYPE, 0, &wizard, &data)) {
		return 0;
	}
	is = !strcmp(wizard->name, name);
	ao2_cleanup(wizard);
	return is;
}

/*
 * Copies every object of `from` into `to` (the store being put in place), then makes what
 * `to` holds agree with `from` object by object: sorcery hands both every change meanwhile, so
 * an object `from` no longer has was deleted, and one it holds in another version was updated.
 */
static void copy_store(const struct ast_sorcery *sorcery, const struct ast_sorcery_wizard *from, void *from_data,
	const struct ast_sorcery_wizard *to, void *to_data)
{
	struct ao2_container *all = ao2_container_alloc_list(AO2_ALLOC_OPT_LOCK_NOLOCK, 0, NULL, NULL);
	struct ao2_iterator i;
	void *object;
	void *now;

	if (!all) {
		return;
	}
	from->retrieve_multiple(sorcery, from_data, OBJECT_TYPE, all, NULL);
	i = ao2_iterator_init(all, 0);
	while ((object = ao2_iterator_next(&i))) {
		to->create(sorcery, to_data, object);
		now = from->retrieve_id(sorcery, from_data, OBJECT_TYPE, ast_sorcery_object_get_id(object));
		if (!now) {
			to->delete(sorcery, to_data, object);
		} else if (now != object) {
			to->update(sorcery, to_data, now);
		}
		ao2_cleanup(now);
		ao2_ref(object, -1);
	}
	ao2_iterator_destroy(&i);
	ao2_ref(all, -1);
}

enum res_scale_contact_store res_scale_contact_store_install(void)
{
	struct ast_sorcery *sorcery = ast_sip_get_sorcery();
	struct ast_sorcery_wizard *memory;
	struct ast_sorcery_wizard *ours;
	void *memory_data;
	void *ours_data;

	if (installed) {
		return RES_SCALE_CONTACT_STORE_INSTALLED;
	}
	if (!sorcery || !only_mapping_is(sorcery, MEMORY)) {
		return RES_SCALE_CONTACT_STORE_NOT_MEMORY;
	}
	/* No module: mapping a wizard references its module, and a referenced module cannot be
	 * unloaded; we take the mapping out ourselves before our code goes away. */
	if (__ast_sorcery_wizard_register(&store, NULL)) {
		return RES_SCALE_CONTACT_STORE_FAILED;
	}
	if (ast_sorcery_get_wizard_mapping(sorcery, OBJECT_TYPE, 0, &memory, &memory_data)) {
		ast_sorcery_wizard_unregister(&store);
		return RES_SCALE_CONTACT_STORE_FAILED;
	}
	/* No wizard arguments: with "" sorcery copies one byte past what it allocated. */
	if (ast_sorcery_object_type_insert_wizard(sorcery, OBJECT_TYPE, OURS, NULL, 0,
			AST_SORCERY_WIZARD_POSITION_FIRST, &ours, &ours_data) != AST_SORCERY_APPLY_SUCCESS) {
		ao2_cleanup(memory);
		ast_sorcery_wizard_unregister(&store);
		return RES_SCALE_CONTACT_STORE_FAILED;
	}
	copy_store(sorcery, memory, memory_data, ours, ours_data);
	ao2_cleanup(memory);
	ast_sorcery_remove_wizard_mapping(sorcery, OBJECT_TYPE, MEMORY);
	installed = ours_data;
	return RES_SCALE_CONTACT_STORE_INSTALLED;
}

int res_scale_contact_store_uninstall(void)
{
	struct ast_sorcery *sorcery = ast_sip_get_sorcery();
	struct ast_sorcery_wizard *memory;
	void *memory_data;

	if (!installed) {
		return 0;
	}
	if (ast_sorcery_object_type_insert_wizard(sorcery, OBJECT_TYPE, MEMORY, NULL, 0,
			AST_SORCERY_WIZARD_POSITION_LAST, &memory, &memory_data) != AST_SORCERY_APPLY_SUCCESS) {
		/* Without memory mapped again the contacts would go with us: stay. */
		return -1;
	}
	copy_store(sorcery, &store, installed, memory, memory_data);
	/* Closes our container (its references go); memory holds every contact now. */
	ast_sorcery_remove_wizard_mapping(sorcery, OBJECT_TYPE, OURS);
	ast_sorcery_wizard_unregister(&store);
	installed = NULL;
	return 0;
}

long res_scale_contact_store_size(void)
{
	return installed ? ao2_container_count(installed) : -1;
}

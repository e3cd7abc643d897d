/*
 * The C side of res_scale: only what Rust cannot express, because Asterisk provides it as a
 * macro (module registration, AST_MODULE_SELF, DEBUG_ATLEAST, pointer-valued sentinels).
 */
#ifndef RES_SCALE_SHIM_H
#define RES_SCALE_SHIM_H

#include <stddef.h>

struct ast_module;
struct ast_config;

/* The module handle the loader gave us (AST_MODULE_SELF). NULL before registration. */
struct ast_module *res_scale_self(void);

/* ast_strdup (a macro): for strings Asterisk frees with ast_free, such as CLI completions. */
char *res_scale_strdup(const char *s);

/* A new ao2 object without destructor (or NULL), for the data of our Stasis registrations:
 * res_stasis tells a handler that another one replaced it only when it registered with data. */
void *res_scale_app_token(void);

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

/* PJSIP contacts (contacts.c). Times are unix seconds; strings are never NULL. */
struct res_scale_contact_fields {
	const char *id;         /* "<aor>;@<md5 of uri>"; only set in observer reports */
	const char *uri;
	const char *path;
	const char *user_agent;
	const char *via_addr;
	const char *call_id;
	const char *endpoint;   /* set when the registrar made the contact for a REGISTER */
	long long expires;
	int via_port;
};

enum res_scale_contact_result {
	RES_SCALE_CONTACT_CREATED = 0,
	RES_SCALE_CONTACT_UPDATED = 1,
	RES_SCALE_CONTACT_REMOVED = 2,
	RES_SCALE_CONTACT_ABSENT = 3,   /* remove: there was no such contact */
	RES_SCALE_CONTACT_NO_AOR = 4,   /* the AOR is not configured on this node */
	RES_SCALE_CONTACT_FAILED = 5,   /* Asterisk refused (logged by res_pjsip) */
	RES_SCALE_CONTACT_REGISTERED_HERE = 6, /* not changed: `ours` said a phone registered it here */
	RES_SCALE_CONTACT_APPLIED = 7,  /* check: still the contact res_scale applied */
};

/* Called with the stored contact, under the AOR's lock, before res_scale changes it: non-zero
 * when res_scale may (it is still what res_scale applied), zero when this node's registrar
 * made or refreshed it for a phone. */
typedef int (*res_scale_contact_ours)(void *data, const struct res_scale_contact_fields *stored);

enum res_scale_contact_change {
	RES_SCALE_CONTACT_CREATE = 0,
	RES_SCALE_CONTACT_UPDATE = 1,
	RES_SCALE_CONTACT_DELETE = 2,
	RES_SCALE_CONTACT_EXISTS = 3,   /* from res_scale_contact_report_all() */
};

/* Creates the contact of an existing AOR, or refreshes it (expiry, path if given, user agent,
 * via, call id) if `ours` agrees, under the AOR's lock, with prune_on_boot set and no endpoint. */
enum res_scale_contact_result res_scale_contact_upsert(const char *aor,
	const struct res_scale_contact_fields *fields, res_scale_contact_ours ours, void *ours_data);

/* Deletes the contact with this URI from the AOR if `ours` agrees, under the AOR's lock. */
enum res_scale_contact_result res_scale_contact_remove(const char *aor, const char *uri,
	res_scale_contact_ours ours, void *ours_data);

/* Asks `ours` about the contact with this URI, under the AOR's lock; changes nothing. */
enum res_scale_contact_result res_scale_contact_check(const char *aor, const char *uri,
	res_scale_contact_ours ours, void *ours_data);

/* Adds (on != 0) or removes the sorcery observer that calls rs_scale_contact_changed(); adding
 * it again, or removing it when it is not there, does nothing. Not thread-safe: lifecycle
 * calls it from one thread at a time. */
int res_scale_contact_observe(int on);

/* Calls rs_scale_contact_changed(RES_SCALE_CONTACT_EXISTS, ..) for every contact there is. */
void res_scale_contact_report_all(void);

/* Tasks queued for sorcery's contact observers (res_pjsip's and ours), or -1 before the first
 * contact was created while observing (the queue is found from inside an observer call). */
long res_scale_contact_backlog(void);

/* The indexed contact store (contact_store.c). Not thread-safe: lifecycle calls install and
 * uninstall from one thread at a time. */
enum res_scale_contact_store {
	RES_SCALE_CONTACT_STORE_INSTALLED = 0,  /* in place of `memory` (or it already was) */
	RES_SCALE_CONTACT_STORE_NOT_MEMORY = 1, /* contacts are not mapped to `memory` alone: left as they are */
	RES_SCALE_CONTACT_STORE_FAILED = 2,     /* sorcery refused a step; `memory` is still in place */
};

/* Puts the indexed store in place of the `memory` wizard for contacts, moving them over. */
enum res_scale_contact_store res_scale_contact_store_install(void);

/* Puts `memory` back with every contact; -1 (and the store stays) if sorcery refused. */
int res_scale_contact_store_uninstall(void);

/* Contacts in the indexed store, or -1 when it is not installed. */
long res_scale_contact_store_size(void);

/* Device state (devstate.c). States are Asterisk's parseable names (ast_devstate_str), origins
 * entity IDs as text. */

struct ast_eid;

/* Parses another node's EID; non-zero when it is not an EID or is this node's own. */
int res_scale_state_origin_eid(const char *origin, struct ast_eid *eid);

/* Subscribes to the device state topic; rs_scale_device_state_changed() then hears of every
 * state this node itself published. Subscribing twice does nothing. */
int res_scale_devstate_subscribe(void);

/* Ends the subscription and waits until its callback no longer runs. */
void res_scale_devstate_unsubscribe(void);

/* Calls rs_scale_device_state_held() for every state of this node's own that Asterisk holds
 * (those set before the module was loaded too). */
void res_scale_devstate_report_local(void);

/* Publishes another node's state of a device under its EID (ast_publish_device_state_full);
 * non-zero when refused (an unparsable origin, or this node's own EID). */
int res_scale_devstate_apply(const char *device, const char *state, int cachable, const char *origin);

/* Removes the cached state of `origin` for the device and has Asterisk publish the device's
 * aggregate again. */
void res_scale_devstate_forget(const char *device, const char *origin);

/* The device's aggregate over every origin, as Asterisk's hints see it. */
const char *res_scale_devstate_aggregate(const char *device);

/* Mailbox state (mwi.c). Mailboxes are Asterisk's unique ids, "mailbox@context"; Asterisk
 * keeps one state per mailbox, whichever node it came from. */

/* Subscribes to the MWI topic; rs_scale_mwi_changed() then hears of every state this node
 * itself published or deleted. Subscribing twice does nothing. */
int res_scale_mwi_subscribe(void);

/* Ends the subscription and waits until its callback no longer runs. */
void res_scale_mwi_unsubscribe(void);

/* Calls rs_scale_mwi_held() for every mailbox state of this node's own that Asterisk holds. */
void res_scale_mwi_report_local(void);

/* Publishes another node's state of a mailbox under its EID (ast_publish_mwi_state_full);
 * non-zero when refused (an unparsable origin, or this node's own EID). */
int res_scale_mwi_apply(const char *mailbox, int new_msgs, int old_msgs, const char *origin);

/* Takes back `origin`'s state of the mailbox if Asterisk still holds it (phones hear "no
 * messages", then the state is deleted): 1 when taken back, 0 when the mailbox holds a later
 * state of this node or of another origin (left alone), -1 for a bad origin. */
int res_scale_mwi_forget(const char *mailbox, const char *origin);

/* What Asterisk holds for the mailbox: 0 and its counts and origin EID (as text), or -1. */
int res_scale_mwi_cached(const char *mailbox, int *new_msgs, int *old_msgs, char *origin, size_t origin_size);

#endif

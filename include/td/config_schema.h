/* The config schema: every key of the JSON document, declared once (key, type, range or values,
 * default, where it lives in td_config_t), for the reader and the writer. Internal to the config
 * module. */
#ifndef TD_CONFIG_SCHEMA_H
#define TD_CONFIG_SCHEMA_H

#include "td/config_schema-t.h"

/* The root object of the document (the contract's shape, docs/ARCHITECTURE.md). */
extern const td_config_object_t td_config_schema;

/* Sets every field of `o` (and of its sub-objects, not of arrays' elements) in the struct at
 * `base` to its default. */
void td_config_schema_defaults(const td_config_object_t *o, void *base);

/* The index of `key` among o's fields, or -1. */
int td_config_schema_find(const td_config_object_t *o, const char *key);

#endif

/* Types of the config schema (config_schema.c): one table of fields per JSON object, which both
 * the reader (config_load.c) and the writer (config_write.c) walk, so a key is declared once.
 * Internal to the config module; free of jansson. */
#ifndef TD_CONFIG_SCHEMA_T_H
#define TD_CONFIG_SCHEMA_T_H

#include <stddef.h>

#include "td/config-t.h"
#include "td/config_report-t.h"

typedef enum td_config_kind_e {
    TD_CF_INT,      /* int at offset, lo..hi */
    TD_CF_BOOL,     /* int at offset, 0 or 1 (JSON true / false) */
    TD_CF_STR,      /* char[size] at offset, NUL-terminated; passes `check` */
    TD_CF_ENUM,     /* int (or enum) at offset: values[i] (i when values is NULL) for names[i] */
    TD_CF_ENUM_STR, /* char[size] at offset holding one of names, as written */
    TD_CF_ADDR,     /* td_addr_t at offset ("IP:port" or "[IPv6]:port") */
    TD_CF_OBJECT,   /* the fields of `sub`, whose struct is at offset (0: the same struct) */
    TD_CF_ARRAY,    /* objects of `sub`: at offset a pointer (owned) to an array, or with
                       TD_CF_EMBEDDED the array itself; size_t count at count_offset */
    TD_CF_CUSTOM,   /* a shape of its own, read and written by code (id), int at offset */
} td_config_kind_t;

/* Field flags. */
#define TD_CF_REQUIRED 0x01 /* a missing key is a problem */
#define TD_CF_HIDE 0x02     /* a secret: never shown in messages */
#define TD_CF_CHANGED                                                                              \
    0x04                    /* written back only when not its default; an OBJECT so marked is      \
                               written only when one of its TD_CF_CHANGED fields is */
#define TD_CF_EARLY 0x08    /* read before the other keys of its object (others start from it) */
#define TD_CF_EMBEDDED 0x10 /* TD_CF_ARRAY: a fixed array in the struct, not a pointer */
#define TD_CF_NAME_OK 0x20  /* TD_CF_ADDR: "HOST:port" with a host name is valid too */

/* TD_CF_CUSTOM shapes. */
enum {
    TD_CF_ID_WORKERS = 1,
    TD_CF_ID_COOKIE_SECURE = 2,
    TD_CF_ID_ENDPOINTS = 3,
    TD_CF_ID_NAMESERVERS = 4,
};

/* A string checker returns NULL when `s` is valid, else the rest of the sentence
 * "VALUE <is not a valid ... (what would be)>". */
typedef const char *td_config_check_fn(const char *s);

/* A cross-field check (config_check.c), run with the report's path at the field (after the field
 * was read and valid) or at the object (after all its fields were read). `obj` is the struct the
 * field or object lives in; inside an array, `first` is its first element and `index` this one's
 * (else NULL and 0); `read` has bit i set when field i of the object was read and valid. */
typedef void td_config_hook_fn(td_config_report_t *r, td_config_t *c, void *obj, const void *first,
                               size_t index, unsigned read);

typedef struct td_config_object_s td_config_object_t;

typedef struct td_config_field_s {
    const char *key; /* borrowed (static) */
    td_config_kind_t kind;
    unsigned flags;                /* TD_CF_* */
    size_t offset;                 /* where the value is, in bytes from its object's struct */
    size_t size;                   /* STR, ENUM_STR: capacity in bytes; ARRAY: element size */
    long long lo, hi;              /* INT: range; ARRAY: hi = most elements */
    long long def;                 /* INT, BOOL, ENUM, CUSTOM: the default */
    const char *def_str;           /* STR, ENUM_STR: the default (NULL = "") */
    const char *const *names;      /* ENUM, ENUM_STR: the valid values, NULL-terminated */
    const int *values;             /* ENUM: the stored value of each name; NULL = its index */
    td_config_check_fn *check;     /* STR: syntax or file checker, or NULL */
    const td_config_object_t *sub; /* OBJECT, ARRAY: the object's (element's) fields */
    long present;                  /* OBJECT: offset of an int set to 1 when the object is given
                                      (and written only then); -1 = none */
    size_t count_offset;           /* ARRAY: offset of the size_t element count */
    const char *what;              /* ARRAY: the element's name in messages ("listener") */
    int id;                        /* CUSTOM: TD_CF_ID_* */
    td_config_hook_fn *after;      /* run once the field was read and valid, or NULL */
} td_config_field_t;

struct td_config_object_s {
    const td_config_field_t *fields;  /* borrowed (static); in the order messages list the keys */
    size_t num_fields;                /* at most 16 */
    const unsigned char *write_order; /* field indices in the order the writer puts the keys;
                                         NULL = the fields' order */
    td_config_hook_fn *after;         /* run once every field of the object was read, or NULL */
    td_config_hook_fn *init;          /* run on each new array element after its defaults, or
                                         NULL (read is 0) */
};

#endif

/* Sticky-session cookies: made, found among other cookies, and refused when tampered or expired. */
#include "td/sticky.h"

#include <string.h>

#include "t.h"

static td_str_t s(const char *z) {
    return (td_str_t){z, strlen(z)};
}

/* Without a configured secret every snapshot gets the same random key for the life of the
 * process, so a reload keeps cookies valid; a configured secret gives a different key. */
static void process_key_is_kept_without_a_secret(void) {
    td_sticky_key_t a, b, set, back;
    td_sticky_key_init(&a, "");
    td_sticky_key_init(&set, "configured");
    td_sticky_key_init(&back, NULL);
    td_sticky_key_init(&b, "");
    T_EQ_INT(a.len, 32);
    T_CHECK(memcmp(a.bytes, b.bytes, a.len) == 0 && b.len == a.len);
    T_CHECK(back.len == a.len && memcmp(a.bytes, back.bytes, a.len) == 0);
    T_EQ_INT(set.len, strlen("configured"));
    char v[160], hdr[300];
    td_str_t be = {0};
    T_CHECK(td_sticky_make(&a, v, sizeof(v), "green", 2000000000) > 0);
    snprintf(hdr, sizeof(hdr), "TDSTICKY=%s", v);
    T_EQ_INT(td_sticky_parse(&b, s(hdr), "TDSTICKY", 1000, &be), 1);
    T_EQ_INT(td_sticky_parse(&set, s(hdr), "TDSTICKY", 1000, &be), 0);
    /* A secret longer than the key keeps its first TD_STICKY_KEY_MAX bytes. */
    char longer[TD_STICKY_KEY_MAX + 20];
    memset(longer, 'k', sizeof(longer) - 1);
    longer[sizeof(longer) - 1] = 0;
    td_sticky_key_init(&set, longer);
    T_EQ_INT(set.len, TD_STICKY_KEY_MAX);
}

int main(void) {
    process_key_is_kept_without_a_secret();
    td_sticky_key_t key, other;
    td_sticky_key_init(&key, "test-secret");
    char v[160], hdr[300];
    size_t n = td_sticky_make(&key, v, sizeof(v), "blue", 2000000000);
    T_CHECK(n > 0);
    T_CHECK(strncmp(v, "blue.2000000000.", 16) == 0);
    T_CHECK(strchr(v, ':') == NULL); /* names the backend, never a server address */

    td_str_t be = {0};
    snprintf(hdr, sizeof(hdr), "a=1; TDSTICKY=%s; b=2", v);
    T_EQ_INT(td_sticky_parse(&key, s(hdr), "TDSTICKY", 1000, &be), 1);
    T_EQ_INT(be.len, 4);
    T_CHECK(memcmp(be.p, "blue", 4) == 0);

    /* Tampered: the backend name changed, the MAC kept. */
    char forged[200];
    snprintf(forged, sizeof(forged), "TDSTICKY=gree%s", v + 3);
    T_EQ_INT(td_sticky_parse(&key, s(forged), "TDSTICKY", 1000, &be), 0);
    /* Tampered MAC. */
    snprintf(hdr, sizeof(hdr), "TDSTICKY=%s", v);
    hdr[strlen(hdr) - 1] = hdr[strlen(hdr) - 1] == 'a' ? 'b' : 'a';
    T_EQ_INT(td_sticky_parse(&key, s(hdr), "TDSTICKY", 1000, &be), 0);
    /* Expired. */
    snprintf(hdr, sizeof(hdr), "TDSTICKY=%s", v);
    T_EQ_INT(td_sticky_parse(&key, s(hdr), "TDSTICKY", 2000000001, &be), 0);
    /* Plain names are not accepted: they carry no signature. */
    T_EQ_INT(td_sticky_parse(&key, s("TDSTICKY=blue"), "TDSTICKY", 1000, &be), 0);
    /* Another cookie whose name merely ends the same. */
    snprintf(hdr, sizeof(hdr), "XTDSTICKY=%s", v);
    T_EQ_INT(td_sticky_parse(&key, s(hdr), "TDSTICKY", 1000, &be), 0);
    /* A different key (another deployment) does not accept this cookie. */
    td_sticky_key_init(&other, "other");
    snprintf(hdr, sizeof(hdr), "TDSTICKY=%s", v);
    T_EQ_INT(td_sticky_parse(&other, s(hdr), "TDSTICKY", 1000, &be), 0);
    return t_done("test_sticky");
}

/* Sticky-session cookies: made, found among other cookies, and refused when tampered or expired. */
#include "td/sticky.h"

#include <stdio.h>
#include <string.h>

#include "t.h"
#include "td/config.h"
#include "td/router.h"
#include "td/snapshot.h"

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

/* A snapshot of a sticky config with routing.cookie.secret `secret` ("" for none). */
static td_snapshot_t *sticky_snapshot(const char *secret) {
    char json[1024];
    snprintf(
        json, sizeof(json),
        "{\"listeners\": [{\"address\": \"127.0.0.1:1\"}],"
        " \"routing\": {\"method\": \"sticky\", \"cookie\": {\"secret\": \"%s\"}},"
        " \"backends\": [{\"name\": \"blue\", \"weight\": 50, \"servers\": [{\"address\": "
        "\"127.0.0.1:2\"}]},"
        "  {\"name\": \"green\", \"weight\": 50, \"servers\": [{\"address\": \"127.0.0.1:3\"}]}]}",
        secret);
    td_config_t *cfg = td_config_parse(json, strlen(json), "t.json", stderr);
    T_CHECK(cfg != NULL);
    char err[256];
    return cfg ? td_snapshot_build(cfg, 1, err, sizeof(err)) : NULL;
}

/* A cookie for `backend` as snapshot `s` signs it ("TDSTICKY=..." in hdr). */
static void cookie_of(const td_snapshot_t *s, const char *backend, char *hdr, size_t cap) {
    char v[160];
    T_CHECK(td_sticky_make(&s->sticky_key, v, sizeof(v), backend, 2000000000) > 0);
    snprintf(hdr, cap, "TDSTICKY=%s", v);
}

/* Whether snapshot `s` accepts the cookie header `hdr` (as the router checks it). */
static int accepts(const td_snapshot_t *snap, const char *hdr) {
    const td_sticky_key_t *keys[TD_STICKY_RING] = {&snap->sticky_key, &snap->sticky_prev};
    td_str_t be = {0};
    return td_sticky_parse_ring(keys, TD_STICKY_RING, s(hdr), "TDSTICKY", 1000, &be);
}

/* A key ring: the first key signs, each is accepted; a key of len 0 is skipped. */
static void ring_accepts_each_key_and_signs_with_the_first(void) {
    td_sticky_key_t newer, older, other, none = {.len = 0};
    td_sticky_key_init(&newer, "newer");
    td_sticky_key_init(&older, "older");
    td_sticky_key_init(&other, "other");
    char v[160], hdr[300];
    td_str_t be = {0};
    const td_sticky_key_t *ring[2] = {&newer, &older}, *one[2] = {&newer, &none};
    td_sticky_make(&older, v, sizeof(v), "blue", 2000000000);
    snprintf(hdr, sizeof(hdr), "TDSTICKY=%s", v);
    T_EQ_INT(td_sticky_parse_ring(ring, 2, s(hdr), "TDSTICKY", 1000, &be), 1);
    T_CHECK(be.len == 4 && memcmp(be.p, "blue", 4) == 0);
    T_EQ_INT(td_sticky_parse_ring(one, 2, s(hdr), "TDSTICKY", 1000, &be), 0);
    td_sticky_make(&other, v, sizeof(v), "blue", 2000000000);
    snprintf(hdr, sizeof(hdr), "TDSTICKY=%s", v);
    T_EQ_INT(td_sticky_parse_ring(ring, 2, s(hdr), "TDSTICKY", 1000, &be), 0);
}

/* A rotation through td_snapshot_set_sticky_secrets: cookies of the old key still pin, new
 * cookies carry the new key (the old key alone refuses them), a cookie of neither is refused;
 * n = 0 gives the config's secret back. */
static void rotation_keeps_old_cookies_and_signs_with_the_new_key(void) {
    const char *first[] = {"k1-0123456789abcdef"};
    td_snapshot_set_sticky_secrets(first, 1);
    td_snapshot_t *before = sticky_snapshot("configured");
    char old_cookie[300], new_cookie[300], stranger[300];
    if (!before)
        return;
    cookie_of(before, "green", old_cookie, sizeof(old_cookie));
    T_EQ_INT(before->sticky_prev.len, 0);

    const char *rotated[] = {"k2-fedcba9876543210", "k1-0123456789abcdef"};
    td_snapshot_set_sticky_secrets(rotated, 2);
    td_snapshot_t *after = sticky_snapshot("configured");
    if (!after)
        return;
    T_EQ_INT(accepts(after, old_cookie), 1);
    cookie_of(after, "blue", new_cookie, sizeof(new_cookie));
    T_EQ_INT(accepts(after, new_cookie), 1);
    T_EQ_INT(accepts(before, new_cookie), 0); /* signed by k2, not k1 */
    td_sticky_key_t k2;
    td_sticky_key_init(&k2, "k2-fedcba9876543210");
    T_CHECK(after->sticky_key.len == k2.len &&
            memcmp(after->sticky_key.bytes, k2.bytes, k2.len) == 0);

    td_snapshot_t *conf = sticky_snapshot("configured");
    td_snapshot_set_sticky_secrets(NULL, 0);
    td_snapshot_t *back = sticky_snapshot("configured");
    if (!conf || !back)
        return;
    cookie_of(back, "blue", stranger, sizeof(stranger)); /* the config's secret */
    T_EQ_INT(accepts(after, stranger), 0);
    T_EQ_INT(accepts(back, old_cookie), 0);
    T_EQ_INT(back->sticky_prev.len, 0);
    td_sticky_key_t configured;
    td_sticky_key_init(&configured, "configured");
    T_CHECK(back->sticky_key.len == configured.len &&
            memcmp(back->sticky_key.bytes, configured.bytes, configured.len) == 0);
    /* The ring takes at most TD_STICKY_RING keys and skips empty ones. */
    const char *many[] = {"", "a1", "a2", "a3"};
    td_snapshot_set_sticky_secrets(many, 4);
    td_snapshot_t *capped = sticky_snapshot("");
    td_snapshot_set_sticky_secrets(NULL, 0);
    if (capped) {
        T_CHECK(capped->sticky_key.len == 2 && memcmp(capped->sticky_key.bytes, "a1", 2) == 0);
        T_CHECK(capped->sticky_prev.len == 2 && memcmp(capped->sticky_prev.bytes, "a2", 2) == 0);
    }
    td_snapshot_release(before);
    td_snapshot_release(after);
    td_snapshot_release(conf);
    td_snapshot_release(back);
    td_snapshot_release(capped);
}

int main(void) {
    process_key_is_kept_without_a_secret();
    ring_accepts_each_key_and_signs_with_the_first();
    rotation_keeps_old_cookies_and_signs_with_the_new_key();
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

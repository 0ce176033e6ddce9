/* Sticky-session cookies: made, found among other cookies, and refused when tampered or expired. */
#include "td/sticky.h"

#include <string.h>

#include "t.h"

static td_str_t s(const char *z) {
    return (td_str_t){z, strlen(z)};
}

int main(void) {
    td_sticky_set_secret("test-secret");
    char v[160], hdr[300];
    size_t n = td_sticky_make(v, sizeof(v), "blue", 2000000000);
    T_CHECK(n > 0);
    T_CHECK(strncmp(v, "blue.2000000000.", 16) == 0);
    T_CHECK(strchr(v, ':') == NULL); /* names the backend, never a server address */

    td_str_t be = {0};
    snprintf(hdr, sizeof(hdr), "a=1; TDSTICKY=%s; b=2", v);
    T_EQ_INT(td_sticky_parse(s(hdr), "TDSTICKY", 1000, &be), 1);
    T_EQ_INT(be.len, 4);
    T_CHECK(memcmp(be.p, "blue", 4) == 0);

    /* Tampered: the backend name changed, the MAC kept. */
    char forged[200];
    snprintf(forged, sizeof(forged), "TDSTICKY=gree%s", v + 3);
    T_EQ_INT(td_sticky_parse(s(forged), "TDSTICKY", 1000, &be), 0);
    /* Tampered MAC. */
    snprintf(hdr, sizeof(hdr), "TDSTICKY=%s", v);
    hdr[strlen(hdr) - 1] = hdr[strlen(hdr) - 1] == 'a' ? 'b' : 'a';
    T_EQ_INT(td_sticky_parse(s(hdr), "TDSTICKY", 1000, &be), 0);
    /* Expired. */
    snprintf(hdr, sizeof(hdr), "TDSTICKY=%s", v);
    T_EQ_INT(td_sticky_parse(s(hdr), "TDSTICKY", 2000000001, &be), 0);
    /* Plain names are not accepted: they carry no signature. */
    T_EQ_INT(td_sticky_parse(s("TDSTICKY=blue"), "TDSTICKY", 1000, &be), 0);
    /* Another cookie whose name merely ends the same. */
    snprintf(hdr, sizeof(hdr), "XTDSTICKY=%s", v);
    T_EQ_INT(td_sticky_parse(s(hdr), "TDSTICKY", 1000, &be), 0);
    /* A different key (another deployment) does not accept this cookie. */
    td_sticky_set_secret("other");
    snprintf(hdr, sizeof(hdr), "TDSTICKY=%s", v);
    T_EQ_INT(td_sticky_parse(s(hdr), "TDSTICKY", 1000, &be), 0);
    return t_done("test_sticky");
}

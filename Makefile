# td — build, run, test. See README.md.
CC ?= cc
SAN ?= 0
ifeq ($(SAN),1)
BUILD ?= build-asan
OPT = -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
else
BUILD ?= build
OPT = -O2 -g
endif
CFLAGS ?=
# Libraries found through pkg-config (their Debian -dev packages are in scripts/deps.sh), asked
# once per make run.
PKGS = libsystemd libcares libnghttp2
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS))
PKG_LIBS := $(shell pkg-config --libs $(PKGS))
# Debian's package build passes _FORTIFY_SOURCE through CPPFLAGS (dpkg-buildflags).
CFLAGS += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wshadow -Iinclude $(OPT) $(PKG_CFLAGS) \
  $(CPPFLAGS)
# Each object also writes the headers it read (-MMD) to a .d file beside it, included below, so a
# changed header rebuilds exactly what includes it.
DEPFLAGS = -MMD -MP
LDFLAGS += $(filter -fsanitize=%,$(OPT))
LIBS = -luv -ljansson -lcurl -lssl -lcrypto -lpthread -lm $(PKG_LIBS)

LIB_SRCS := $(filter-out src/main.c,$(wildcard src/*.c))
LIB_OBJS := $(LIB_SRCS:src/%.c=$(BUILD)/obj/%.o)
# The demo backend (td demo, td backend) is linked into the td binary only, not into libtd.a.
DEMO_SRCS := $(wildcard src/demo/*.c)
DEMO_OBJS := $(DEMO_SRCS:src/%.c=$(BUILD)/obj/%.o)
UNIT_SRCS := $(wildcard tests/unit/test_*.c)
UNIT_BINS := $(UNIT_SRCS:tests/unit/%.c=$(BUILD)/tests/%)
PYTEST ?= /usr/bin/python3 -m pytest
FUZZ_SECONDS ?= 60

TDCTL_SRCS := $(wildcard tools/tdctl/*.c)
TDCTL_OBJS := $(TDCTL_SRCS:tools/tdctl/%.c=$(BUILD)/obj/tdctl/%.o)

DEPS := $(LIB_OBJS:.o=.d) $(DEMO_OBJS:.o=.d) $(BUILD)/obj/main.d
-include $(wildcard $(DEPS) $(TDCTL_OBJS:.o=.d))

# Man pages: one scdoc source each in man/ (td.8.scd -> td.8).
MAN_PAGES := $(patsubst man/%.scd,$(BUILD)/man/%,$(wildcard man/*.scd))

# make install: PREFIX (default /usr/local) and DESTDIR (a staging root, as packagers use).
# With PREFIX=/usr the config goes to /etc and the unit to /lib/systemd/system, as Debian has them.
PREFIX ?= /usr/local
DESTDIR ?=
SBINDIR ?= $(PREFIX)/sbin
BINDIR ?= $(PREFIX)/bin
MANDIR ?= $(PREFIX)/share/man
DOCDIR ?= $(PREFIX)/share/doc/td
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
SYSCONFDIR ?= $(if $(filter /usr,$(PREFIX)),/etc,$(PREFIX)/etc)
UNITDIR ?= $(if $(filter /usr,$(PREFIX)),/lib/systemd/system,$(PREFIX)/lib/systemd/system)
TD_VERSION := $(shell sed -n 's/^\#define TD_VERSION "\(.*\)"/\1/p' include/td/version.h)

.PHONY: all run deps test unit e2e etcd-test test-asan fuzz bench clean format format-check
.PHONY: install uninstall deb man

all: $(BUILD)/td $(BUILD)/tdctl $(MAN_PAGES)

man: $(MAN_PAGES)

$(BUILD)/man/%: man/%.scd | $(BUILD)/man
	scdoc < $< > $@.tmp && mv $@.tmp $@

$(BUILD)/man:
	mkdir -p $@

deps:
	@scripts/deps.sh build

# An object without its .d file (built before -MMD, or the .d lost) is rebuilt: nothing else
# would know which headers it depends on.
$(BUILD)/obj/%.o: src/%.c $(BUILD)/obj/%.d | $(BUILD)/obj
	$(CC) $(CFLAGS) $(DEPFLAGS) -c -o $@ $<

$(BUILD)/obj/demo/%.o: src/demo/%.c $(BUILD)/obj/demo/%.d | $(BUILD)/obj/demo
	$(CC) $(CFLAGS) $(DEPFLAGS) -c -o $@ $<

$(DEPS):

$(BUILD)/obj/console.o: console/index.html

$(BUILD)/obj $(BUILD)/obj/demo $(BUILD)/tests:
	mkdir -p $@

$(BUILD)/libtd.a: $(LIB_OBJS)
	rm -f $@ && ar rcs $@ $^

$(BUILD)/td: $(BUILD)/obj/main.o $(DEMO_OBJS) $(BUILD)/libtd.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

# tdctl: one object per file of tools/tdctl/, with its .d like those of src/.
$(BUILD)/obj/tdctl/%.o: tools/tdctl/%.c $(BUILD)/obj/tdctl/%.d | $(BUILD)/obj/tdctl
	$(CC) $(CFLAGS) $(DEPFLAGS) -c -o $@ $<

$(TDCTL_OBJS:.o=.d):

$(BUILD)/obj/tdctl:
	mkdir -p $@

$(BUILD)/tdctl: $(TDCTL_OBJS)
	$(CC) $(LDFLAGS) -o $@ $^ -lcurl -ljansson

$(BUILD)/tests/test_http1_oracle: tests/unit/test_http1_oracle.c tests/unit/t.h $(BUILD)/libtd.a | $(BUILD)/tests
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libtd.a -lhttp_parser $(LIBS)

$(BUILD)/tests/%: tests/unit/%.c tests/unit/t.h $(BUILD)/libtd.a | $(BUILD)/tests
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libtd.a $(LIBS)

# The etcd client's test program: run by tests/e2e/test_etcd_client.py against a real etcd, so
# not part of `make unit`.
ETCD_TEST := $(BUILD)/tests/etcd_client_test
$(ETCD_TEST): tests/etcd/etcd_client_test.c $(BUILD)/libtd.a | $(BUILD)/tests
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libtd.a $(LIBS)

etcd-test: $(ETCD_TEST)

run: deps
	@$(MAKE) --no-print-directory all
	$(BUILD)/td demo

unit: $(UNIT_BINS)
	@set -e; for t in $(UNIT_BINS); do echo "== $$t"; ./$$t; done

e2e: all $(ETCD_TEST)
	TD_BIN=$(CURDIR)/$(BUILD)/td TDCTL_BIN=$(CURDIR)/$(BUILD)/tdctl $(PYTEST) -q tests/e2e

# The whole suite: unit + end-to-end, then both again under ASan + UBSan.
test:
	@scripts/deps.sh test
	@$(MAKE) --no-print-directory all unit e2e
	@$(MAKE) --no-print-directory test-asan

test-asan:
	@$(MAKE) --no-print-directory SAN=1 CC=clang all unit etcd-test
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
	  TD_BIN=$(CURDIR)/build-asan/td TDCTL_BIN=$(CURDIR)/build-asan/tdctl TD_ASAN=1 \
	  $(PYTEST) -q tests/e2e

# libFuzzer targets (clang), each run for FUZZ_SECONDS.
FUZZ_TARGETS := $(patsubst fuzz/%.c,build-fuzz/%,$(wildcard fuzz/fuzz_*.c))
build-fuzz/%: fuzz/%.c $(LIB_SRCS) $(wildcard include/td/*.h)
	@mkdir -p build-fuzz
	clang -std=c11 -D_GNU_SOURCE -Iinclude -g -O1 -fsanitize=fuzzer,address,undefined -o $@ $< $(LIB_SRCS) $(LIBS)

fuzz:
	@scripts/deps.sh test
	@$(MAKE) --no-print-directory $(FUZZ_TARGETS)
	@set -e; for f in $(FUZZ_TARGETS); do n=$$(basename $$f); mkdir -p build-fuzz/corpus-$$n; \
	  echo "== $$n for $(FUZZ_SECONDS) s"; \
	  ./$$f -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 build-fuzz/corpus-$$n fuzz/corpus/$$n 2>&1 | tail -n 3; done

bench:
	@scripts/deps.sh bench
	@$(MAKE) --no-print-directory all
	bench/run.sh

FORMAT_FILES = src/*.c src/*.h src/demo/*.c src/demo/*.h include/td/*.h tools/tdctl/*.[ch] \
  tests/unit/*.c tests/unit/*.h tests/etcd/*.c fuzz/*.c

format:
	clang-format -i $(FORMAT_FILES)

# Fails, listing each deviation, when a file is not as .clang-format lays it out (CI runs it).
format-check:
	@scripts/deps.sh test
	clang-format --dry-run --Werror $(FORMAT_FILES)

# td, tdctl, the man pages, the systemd unit (its paths from SBINDIR and SYSCONFDIR), an example
# config (never over one that is there), logrotate's entry, bash completion and the docs.
install: all
	install -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR)/man1 \
	  $(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(UNITDIR) \
	  $(DESTDIR)$(SYSCONFDIR)/td $(DESTDIR)$(SYSCONFDIR)/logrotate.d $(DESTDIR)$(BASHCOMPDIR) \
	  $(DESTDIR)$(DOCDIR)/examples
	install -m 755 $(BUILD)/td $(DESTDIR)$(SBINDIR)/td
	install -m 755 $(BUILD)/tdctl $(DESTDIR)$(BINDIR)/tdctl
	install -m 644 $(BUILD)/man/tdctl.1 $(DESTDIR)$(MANDIR)/man1/tdctl.1
	install -m 644 $(BUILD)/man/td.json.5 $(DESTDIR)$(MANDIR)/man5/td.json.5
	install -m 644 $(BUILD)/man/td.8 $(DESTDIR)$(MANDIR)/man8/td.8
	sed -e 's|@SBINDIR@|$(SBINDIR)|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g' dist/systemd/td.service.in \
	  > $(DESTDIR)$(UNITDIR)/td.service && chmod 644 $(DESTDIR)$(UNITDIR)/td.service
	[ -e $(DESTDIR)$(SYSCONFDIR)/td/td.json ] || \
	  install -m 644 dist/td.json $(DESTDIR)$(SYSCONFDIR)/td/td.json
	install -m 644 dist/logrotate/td $(DESTDIR)$(SYSCONFDIR)/logrotate.d/td
	install -m 644 dist/bash-completion/tdctl $(DESTDIR)$(BASHCOMPDIR)/tdctl
	install -m 644 README.md docs/ARCHITECTURE.md $(DESTDIR)$(DOCDIR)/
	install -m 644 examples/README.md examples/td.json $(DESTDIR)$(DOCDIR)/examples/

# Everything install put there but the config file (yours now), as dpkg -r keeps conffiles.
uninstall:
	rm -f $(DESTDIR)$(SBINDIR)/td $(DESTDIR)$(BINDIR)/tdctl $(DESTDIR)$(MANDIR)/man1/tdctl.1 \
	  $(DESTDIR)$(MANDIR)/man5/td.json.5 $(DESTDIR)$(MANDIR)/man8/td.8 \
	  $(DESTDIR)$(UNITDIR)/td.service $(DESTDIR)$(SYSCONFDIR)/logrotate.d/td \
	  $(DESTDIR)$(BASHCOMPDIR)/tdctl
	rm -rf $(DESTDIR)$(DOCDIR)
	@echo "kept $(DESTDIR)$(SYSCONFDIR)/td/td.json (remove it by hand if you want it gone)"

# The Debian package, built by Debian's tools (dpkg-buildpackage, debhelper) from debian/ in a
# copy of this tree under build/deb/src (dpkg-buildpackage writes its results next to the tree,
# and its clean step runs make clean: neither may touch this tree). The .deb files land in
# build/deb/. debian/changelog's version must be the one td reports.
deb:
	@scripts/deps.sh deb
	@v=$$(dpkg-parsechangelog -S Version); [ "$$v" = "$(TD_VERSION)" ] || \
	  { echo "debian/changelog says $$v, td says $(TD_VERSION): add a changelog entry" >&2; exit 1; }
	rm -rf build/deb && mkdir -p build/deb/src/td-$(TD_VERSION)
	tar -c --exclude=./build --exclude=./build-asan --exclude=./build-fuzz --exclude=./node_modules \
	  --exclude=./.git --exclude=__pycache__ --exclude=.pytest_cache . | \
	  tar -x -C build/deb/src/td-$(TD_VERSION)
	cd build/deb/src/td-$(TD_VERSION) && dpkg-buildpackage -us -uc -b -j2
	mv build/deb/src/*.deb build/deb/src/*.buildinfo build/deb/src/*.changes build/deb/
	rm -rf build/deb/src
	@ls build/deb/*.deb

clean:
	rm -rf build build-asan build-fuzz

# ckpt's top-level make targets. kbuild itself reads ./Kbuild (for `make -C KDIR M=...`), so this
# file is only for people. Every target is a thin wrapper around a script in tools/.
.PHONY: all kmod kernel kernel-debug kernel-kasan userspace test test-native test-kasan kunit demo bench overhead floor fuzz fuzz-reader clean fmt

all: kmod userspace

kmod:             ## build ckpt.ko against KDIR (default: the cached tree from tools/kernel.sh)
	tools/kmod.sh

kernel:           ## fetch and build the test kernel (cached under /var/cache/ckpt)
	tools/kernel.sh

kernel-debug:     ## the same with lockdep, KFENCE and kmemleak
	tools/kernel.sh --debug

kernel-kasan:     ## the same with KASAN (built with clang)
	tools/kernel.sh --kasan

userspace:
	cargo build --release --locked

test:             ## everything: lints, native tests, guest tests
	tools/test.sh

test-native:
	tools/test.sh --native

test-kasan:       ## everything, the guest suite on the KASAN kernel
	tools/test.sh --kasan

kunit:            ## the module's KUnit tests only: boot the test kernel, load the module, check the KTAP
	tools/kunit.sh

fuzz:             ## a million random ioctls against the module on the debug kernel (tools/fuzz.sh; SEED=, CALLS=, KASAN=1 for the KASAN kernel)
	tools/fuzz.sh $(if $(KASAN),--kasan) $(if $(SEED),--seed $(SEED)) $(if $(CALLS),--calls $(CALLS))

fuzz-reader:      ## libFuzzer over the image reader, natively (tools/fuzz-reader.sh; SECS=, default 600)
	tools/fuzz-reader.sh $(if $(SECS),--secs $(SECS))

demo:             ## boot the guest and show the module at work
	tools/demo.sh

fmt:
	cargo fmt --all
	tools/rustfmt-kmod.sh

clean:
	tools/kmod.sh clean
	cargo clean

bench:            ## checkpoint/restore benchmark in the guest, side by side with CRIU when available
	tools/bench.sh

overhead:         ## the interceptor's cost while no checkpoint runs (natively, with and without it)
	tools/overhead.sh

floor:            ## what the guest charges for faulting, zeroing, copying and hashing a GiB (bench/floor.c)
	tools/floor.sh

# Sourced by the GPU-machine scripts: installs the Python packages carried in .whl into /tmp/site
# and puts it on PYTHONPATH. A package is carried either as a wheel or, when the wheels would push
# the carried tree over the device tool's 64 MiB, as an unpacked wheel in a tar.xz (the
# onnxruntime 1.31.1 wheel is 23.7 MB zipped, 13.1 MB as tar.xz):
#   mkdir /tmp/w && (cd /tmp/w && unzip -q ../onnxruntime-*.whl && tar cf - . | xz -9) > .whl/onnxruntime-1.31.1.tar.xz
# Extracting an unpacked wheel into the target folder is what `pip install --target` does with it.
install_carried_wheels() {
    mkdir -p /tmp/site
    if ls .whl/*.whl >/dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
    fi
    for t in .whl/*.tar.xz; do
        [ -f "$t" ] || continue
        tar xJf "$t" -C /tmp/site || return 1
    done
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
}

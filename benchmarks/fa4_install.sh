# Sourced by benchmarks/gpu_run.sh: install flash-attn-4 from its two-part wheel set (../shared/gpu/fa4_wheels.sh)
# into $SITE and put it on PYTHONPATH. Part 1 of the CUTLASS DSL compiler wheel was copied to $FA4_STAGE by an
# earlier `gpu_run.sh fa4-stage` on the same machine; part 2, its checksum and the small wheels are in $FA4_PARTS.
# Prints `fa4: installed <version>` or `fa4: not installed (<why>)`; never stops the run (fa4 is optional).
fa4_install() {
  local stage=${FA4_STAGE:-/tmp/fa4_stage} parts=${FA4_PARTS:-.whl_fa4_2} site=${SITE:-/tmp/site} py=${PYTHON:-python3}
  local joined=${FA4_JOINED:-/tmp/fa4w} part2 w version
  if [ ! -d "$parts" ]; then echo "fa4: not installed (no $parts/ in this checkout)"; return 0; fi
  part2=$(ls "$parts"/*.whl.part2 2>/dev/null | head -n 1)
  if [ -z "$part2" ]; then echo "fa4: not installed (no *.whl.part2 in $parts/)"; return 0; fi
  w=$(basename "$part2" .part2)
  if [ ! -f "$stage/$w.part1" ]; then
    echo "fa4: not installed ($stage/$w.part1 missing: run 'bash benchmarks/gpu_run.sh fa4-stage' first, same machine)"
    return 0
  fi
  mkdir -p "$joined" && cat "$stage/$w.part1" "$part2" > "$joined/$w" || { echo "fa4: not installed (join failed)"; return 0; }
  if ! (cd "$joined" && sha256sum -c --quiet "$OLDPWD/$parts/SHA256" >/dev/null 2>&1); then
    echo "fa4: not installed (sha256 of the joined $w does not match $parts/SHA256)"; return 0
  fi
  if ! "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
      "$parts"/*.whl "$joined/$w"; then
    echo "fa4: not installed (pip install into $site failed)"; return 0
  fi
  # pip --target does not run the DSL's .pth file, hence the dsl_packages entry.
  export PYTHONPATH="$site:$site/nvidia_cutlass_dsl/dsl_packages${PYTHONPATH:+:$PYTHONPATH}"
  version=$("$py" -c "import importlib.metadata as m, flash_attn.cute.interface; print(m.version('flash-attn-4'))" 2>&1 | tail -n 1)
  if [ -n "$version" ] && "$py" -c "import flash_attn.cute.interface" >/dev/null 2>&1; then
    echo "fa4: installed $version"
  else
    echo "fa4: not installed (import flash_attn.cute failed: $version)"
  fi
}

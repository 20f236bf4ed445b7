# Sharded high-precision Z (LARS priors only) -> exact reduce -> IWAE NLL.


rule estimate_z:
    """One shard of the Monte Carlo estimate of Z = E_pi[a(z)] (Eq. A.3), one GPU each."""
    input:
        model=L.model(),
    output:
        L.z_shard(),
    log:
        L.log("estimate_z", leaf="shard{shard}of{nshards}"),
    params:
        evaluate=step_params("estimate_z", "evaluate"),
    conda:
        "../envs/larsvae.yaml"
    threads: 1
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=720,
    shell:
        "OMP_NUM_THREADS={threads} gpu_slot larsvae estimate-z --threads {threads}"
        " --checkpoint {input.model:q} --shard {wildcards.shard} --num-shards {wildcards.nshards}"
        " --eval-params {params.evaluate:q} --out {output:q} > {log:q} 2>&1"


rule reduce_z:
    """Exact merge of the shards' sufficient statistics: mean and standard error of Z."""
    input:
        z_shards,
    output:
        L.z(),
    log:
        L.log("reduce_z"),
    conda:
        "../envs/larsvae.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "larsvae reduce-z --out {output:q} {input:q} > {log:q} 2>&1"


rule evaluate:
    """Test NLL by IWAE with K importance samples (LARS: log p(z) uses the reduced Z)."""
    input:
        unpack(evaluate_inputs),
    output:
        L.nll(),
    log:
        L.log("evaluate"),
    params:
        evaluate=step_params("evaluate", "evaluate"),
        z=z_option,
    conda:
        "../envs/larsvae.yaml"
    threads: 1
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=720,
    shell:
        "OMP_NUM_THREADS={threads} gpu_slot larsvae evaluate --threads {threads}"
        " --checkpoint {input.model:q} {params.z} --dataset-file {input.data:q}"
        " --eval-params {params.evaluate:q} --out {output:q} > {log:q} 2>&1"


if P.results:

    rule publish:
        """A finished cell's nll.json and curve, copied for git into paths.results with their
        provenance (params, checkpoint, data, Z, code version, cost). Its output is a stamp:
        the published files are read by the reports as source files (common.smk), so a fresh
        clone without runs/ plans no job of a published cell."""
        input:
            unpack(publish_inputs),
        output:
            L.publish_stamp(),
        log:
            L.log("publish"),
        params:
            args=publish_args,
            out_dir=publish_dir,
        conda:
            "../envs/larsvae.yaml"
        threads: 1
        resources:
            mem_mb=1000,
            runtime=10,
        shell:
            "larsvae publish --nll {input.nll:q} --curve {input.curve:q}"
            " --checkpoint {input.model:q} {params.args} --out-dir {params.out_dir:q}"
            " --stamp {output:q} > {log:q} 2>&1"

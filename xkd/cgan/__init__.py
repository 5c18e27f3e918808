"""cGAN-KD machinery (Ding et al., ESWA 2023; seed_methods.md section 5): conditional GANs for
classification and continuous labels (``networks``, ``losses``, ``vicinal``, ``augment``), their
resumable training and sample grid (``training``, ``grid``), cDR-RS subsampling (``subsample``) and
teacher filtering/relabelling (``filtering``), configured by ``config``; in the experiment flow,
config checks (``flow_checks``), the per-seed GAN stage and real + fake training set (``stage``),
the processed fake set (``process``) and its cache file (``fakeset``). Import from the modules;
this package imports nothing at load time so that ``xkd.config`` can use ``xkd.cgan.config``
without an import cycle."""

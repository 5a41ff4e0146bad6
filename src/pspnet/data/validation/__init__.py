"""The data validation gate between ``prepare`` and ``train``, as domain code.

:mod:`.checks` is the catalogue of expectations, :mod:`.tables` builds the tables they run on,
:mod:`.expectations` runs them with Great Expectations, :mod:`.report` explains the failures
and :mod:`.gate` ties these together. The stage (:mod:`pspnet.stages.validate`) decides where
the reports go.
"""

"""The top of the stack: the `omad` command (omad.cli), closed-loop evaluation of any policy source
(omad.evaluation) and the end-to-end demo (omad.demo). No other package imports this one."""

# A theme-like fish set-up.
set -g fish_greeting "Welcome to fish SBXP0123456789abcdef:"
function fish_prompt
    set_color green; echo -n (whoami)'@'(hostname)' '; set_color blue; echo -n (prompt_pwd)
    set_color normal; echo; echo -n '❯ '
end
function fish_right_prompt
    set_color red; echo -n $status; set_color normal
end
fish_vi_key_bindings
alias cat 'echo ALIASED'

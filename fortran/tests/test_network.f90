! A hand-written model file through load, forward (vs. a direct computation), save/reload,
! workspace reuse, a training state next to the network, and every kind of bad input.
program test_network
  use, intrinsic :: iso_c_binding, only: c_loc, c_ptr, c_associated
  use, intrinsic :: ieee_arithmetic, only: ieee_value, ieee_quiet_nan
  use colnn
  implicit none
  integer :: failures = 0
  type(network_t), target :: net, net2, other
  type(workspace_t), target :: ws
  type(training_state_t) :: training, untouched
  integer :: stat
  character(len=ERRMSG_LEN) :: msg
  real(wp) :: x(3, 5), y(2, 5), y2(2, 5), expected(2, 5), ybig(2, 7), xbig(3, 7), dx(3, 5)
  type(c_ptr) :: p1, p2
  integer :: j

  call write_good('good.colnn')
  call net%load('good.colnn', stat, msg)
  call expect(stat == 0, 'load good file: '//trim(msg))
  call expect(net%n_inputs == 3 .and. net%n_outputs == 2 .and. net%n_layers == 5, 'shape')
  call expect(net%num_params() == 3 * 4 + 4 + 4 * 4 + 4 * 2, 'param count')
  do j = 1, 5
    x(:, j) = [real(wp) :: 0.5 * j - 1, 1.0 - 0.3 * j, 0.1 * j * j - 0.7]
  end do
  call net%forward(x, y, stat, msg)
  call expect(stat == 0, 'forward: '//trim(msg))
  call reference(x, expected)
  call expect(maxval(abs(y - expected)) <= 1e-5 * maxval(abs(expected)), 'forward matches reference')

  ! save and reload: bit-identical outputs
  call net%save('saved.colnn', stat, msg)
  call expect(stat == 0, 'save: '//trim(msg))
  call net2%load('saved.colnn', stat, msg)
  call expect(stat == 0, 'reload: '//trim(msg))
  call net2%forward(x, y2, stat, msg)
  call expect(stat == 0 .and. all(y2 == y), 'reloaded model gives identical outputs')

  ! the steady-state call reuses its work arrays; checked on a workspace of the caller's own
  ! (forward_ws): in the OpenMP build forward's are thread-local and net%ws stays unallocated
  call net%forward_ws(ws, x, y2, stat, msg)
  call expect(stat == 0 .and. allocated(ws%a), 'forward_ws: '//trim(msg))
  p1 = c_loc(ws%a(1, 1))
  call net%forward_ws(ws, x, y2, stat, msg)
  p2 = c_loc(ws%a(1, 1))
  call expect(c_associated(p1, p2), 'workspace reused between calls of the same column count')
  call expect(all(y2 == y), 'forward_ws gives forward''s outputs')
  call net%forward(x, y2, stat, msg)
  call expect(all(y2 == y), 'repeatable forward')
  ! a larger block, then its first 5 columns equal the small block's result
  xbig = 0
  xbig(:, 1:5) = x
  call net%forward(xbig, ybig, stat, msg)
  call expect(stat == 0 .and. maxval(abs(ybig(:, 1:5) - y)) <= 1e-6 * maxval(abs(y)), 'column independence')

  ! training's caches live in a training state, not in the network
  call untouched%backward(net, y, stat, msg)
  call expect(stat == COLNN_ERR_ARGUMENT .and. index(msg, 'no forward_train') > 0, &
              'backward before forward_train: '//trim(msg))
  call training%forward_train(net, x, y2, stat, msg)
  call expect(stat == 0, 'forward_train: '//trim(msg))
  call training%backward(net, y2, stat, msg, dx=dx)
  call expect(stat == 0, 'backward: '//trim(msg))
  call write_text('other.colnn', head()//dense_block('relu', '1 2 3 4')//nl())
  call other%load('other.colnn', stat, msg)
  call expect(stat == 0, 'load other: '//trim(msg))
  call training%backward(other, y2, stat, msg)
  call expect(stat == COLNN_ERR_ARGUMENT .and. index(msg, 'another network') > 0, &
              'backward on another network: '//trim(msg))

  ! bad arguments
  call net%forward(x(1:2, :), y, stat, msg)
  call expect(stat == COLNN_ERR_ARGUMENT .and. index(msg, 'features') > 0, 'wrong feature count: '//trim(msg))
  call net%forward(x(:, 1:0), y(:, 1:0), stat, msg)
  call expect(stat == COLNN_ERR_ARGUMENT .and. index(msg, 'zero columns') > 0, 'zero columns: '//trim(msg))
  call net%forward(x, y(:, 1:4), stat, msg)
  call expect(stat == COLNN_ERR_ARGUMENT, 'column mismatch: '//trim(msg))
  x(2, 3) = ieee_value(x(2, 3), ieee_quiet_nan)
  call net%forward(x, y, stat, msg)
  call expect(stat == COLNN_ERR_NONFINITE .and. index(msg, 'column 3') > 0, 'NaN input: '//trim(msg))

  ! bad files: each gives a status and a message naming the file
  call bad_file('missing.colnn', '', COLNN_ERR_IO, 'missing.colnn')
  call bad_file('wrongversion.colnn', 'colnn 7'//nl()//'precision float32', COLNN_ERR_FORMAT, 'version 7')
  call bad_file('empty.colnn', '', COLNN_ERR_FORMAT, 'empty', create=.true.)
  call bad_file('truncated.colnn', head()//'layer dense'//nl()//'units 4'//nl()//'use_bias true'//nl()// &
                'activation relu'//nl()//'tensor kernel 3 4'//nl()//'1 2 3 4'//nl(), COLNN_ERR_FORMAT, 'truncated')
  call bad_file('huge.colnn', head()//'layer dense'//nl()//'units 4'//nl()//'use_bias false'//nl()// &
                'activation relu'//nl()//'tensor kernel 2000000000 2000000000'//nl(), COLNN_ERR_FORMAT, 'declares')
  call bad_file('negative.colnn', head()//'layer dense'//nl()//'name d'//nl()//'units -4'//nl()//'use_bias false'//nl()// &
                'activation relu'//nl()//'end'//nl(), COLNN_ERR_FORMAT, 'units')
  call bad_file('count.colnn', head()//dense_block('relu', '1 2 3')//nl(), COLNN_ERR_FORMAT, 'expected 4 values, found 3')
  call bad_file('token.colnn', head()//dense_block('relu', '1 2 x3 4')//nl(), COLNN_ERR_FORMAT, 'not a number')
  call bad_file('nan.colnn', head()//dense_block('relu', '1 2 nan 4')//nl(), COLNN_ERR_FORMAT, 'not a number')
  call bad_file('inf.colnn', head()//dense_block('relu', '1 2 1e99 4')//nl(), COLNN_ERR_NONFINITE, 'not finite')
  call bad_file('act.colnn', head()//dense_block('gaussian', '1 2 3 4')//nl(), COLNN_ERR_UNSUPPORTED, 'gaussian')
  call bad_file('layer.colnn', head()//'layer conv2d'//nl()//'name c'//nl()//'end'//nl(), COLNN_ERR_UNSUPPORTED, 'conv2d')
  call bad_file('key.colnn', head()//'layer dropout'//nl()//'name d'//nl()//'rate 0.1'//nl()//'colour red'//nl()//'end'//nl(), &
                COLNN_ERR_FORMAT, 'colour')
  call bad_file('outputs.colnn', 'colnn 1'//nl()//'precision float32'//nl()//'inputs 3'//nl()//'outputs 9'//nl()// &
                'layers 1'//nl()//'layer dropout'//nl()//'name d'//nl()//'rate 0.1'//nl()//'end'//nl(), COLNN_ERR_FORMAT, 'outputs')
  call bad_file('.', '', COLNN_ERR_IO, '.', create=.false.)

  if (failures > 0) then
    print '(i0,a)', failures, ' checks failed'
    error stop 1
  end if
  ! the files it wrote go (fpm test runs in the project's root)
  call remove_file('good.colnn')
  call remove_file('saved.colnn')
  call remove_file('other.colnn')
  print '(a)', 'test_network: all passed'

contains

  function nl() result(s)
    character(len=1) :: s
    s = new_line('a')
  end function nl

  function head() result(s)
    character(len=:), allocatable :: s
    s = 'colnn 1'//nl()//'precision float32'//nl()//'inputs 3'//nl()//'outputs 4'//nl()//'layers 1'//nl()
  end function head

  function dense_block(act, row3) result(s)
    character(len=*), intent(in) :: act, row3
    character(len=:), allocatable :: s
    s = 'layer dense'//nl()//'name d'//nl()//'units 4'//nl()//'use_bias false'//nl()//'activation '//act//nl()// &
        'tensor kernel 3 4'//nl()//'1 2 3 4'//nl()//'5 6 7 8'//nl()//row3//nl()//'end'
  end function dense_block

  subroutine write_text(path, text)
    character(len=*), intent(in) :: path, text
    integer :: u
    open (newunit=u, file=path, status='replace', access='stream', form='unformatted')
    write (u) text
    close (u)
  end subroutine write_text

  subroutine bad_file(path, text, expected_stat, fragment, create)
    character(len=*), intent(in) :: path, text, fragment
    integer, intent(in) :: expected_stat
    logical, intent(in), optional :: create
    type(network_t) :: bad
    logical :: do_create
    do_create = len(text) > 0
    if (present(create)) do_create = create
    if (do_create) call write_text(path, text)
    call bad%load(path, stat, msg)
    call expect(stat == expected_stat .and. index(msg, fragment) > 0 .and. index(msg, path) > 0 &
                .and. .not. bad%is_loaded(), 'bad file '//path//' -> stat '//status_name(stat)//': '//trim(msg))
    if (do_create) call remove_file(path)
  end subroutine bad_file

  subroutine remove_file(path)
    character(len=*), intent(in) :: path
    integer :: u, ios
    open (newunit=u, file=path, status='old', iostat=ios)
    if (ios == 0) close (u, status='delete')
  end subroutine remove_file

  subroutine write_good(path)
    character(len=*), intent(in) :: path
    call write_text(path, &
      '# a hand-written model'//nl()// &
      'colnn 1'//nl()//'precision float32'//nl()//'inputs 3'//nl()//'outputs 2'//nl()//'layers 5'//nl()// &
      'meta note hand written'//nl()//nl()// &
      'layer dense'//nl()//'name d1'//nl()//'units 4'//nl()//'use_bias true'//nl()// &
      'activation relu negative_slope=0 max_value=none threshold=0'//nl()// &
      'tensor kernel 3 4'//nl()//'0.1 -0.2 0.3 0.4'//nl()//'-0.5 0.6 0.7 -0.8'//nl()//'0.9 1.0 -1.1 1.2'//nl()// &
      'tensor bias 4'//nl()//'0.01 0.02 -0.03 0.04'//nl()//'end'//nl()// &
      'layer batch_normalization'//nl()//'name bn'//nl()//'epsilon 0.001'//nl()//'momentum 0.99'//nl()// &
      'center true'//nl()//'scale true'//nl()// &
      'tensor gamma 4'//nl()//'1.5 0.5 1.0 2.0'//nl()//'tensor beta 4'//nl()//'0.1 0.2 0.3 0.4'//nl()// &
      'tensor moving_mean 4'//nl()//'0.2 0.1 0.0 -0.1'//nl()//'tensor moving_variance 4'//nl()//'1.0 4.0 0.25 2.0'//nl()// &
      'end'//nl()// &
      'layer activation'//nl()//'name act'//nl()//'activation leaky_relu negative_slope=0.3'//nl()//'end'//nl()// &
      'layer dropout'//nl()//'name drop'//nl()//'rate 0.25'//nl()//'end'//nl()// &
      'layer dense'//nl()//'name d2'//nl()//'units 2'//nl()//'use_bias false'//nl()//'activation linear'//nl()// &
      'tensor kernel 4 2'//nl()//'1 -1'//nl()//'0.5 0.25'//nl()//'-2 1'//nl()//'0.125 3'//nl()//'end'//nl())
  end subroutine write_good

  subroutine reference(x, y)
    real(wp), intent(in) :: x(:, :)
    real(wp), intent(out) :: y(:, :)
    real(dp) :: k1(3, 4), b1(4), g(4), be(4), mu(4), var(4), k2(4, 2), h(4)
    integer :: j
    k1 = transpose(reshape([0.1_dp, -0.2_dp, 0.3_dp, 0.4_dp, -0.5_dp, 0.6_dp, 0.7_dp, -0.8_dp, &
                            0.9_dp, 1.0_dp, -1.1_dp, 1.2_dp], [4, 3]))
    b1 = [0.01_dp, 0.02_dp, -0.03_dp, 0.04_dp]
    g = [1.5_dp, 0.5_dp, 1.0_dp, 2.0_dp]; be = [0.1_dp, 0.2_dp, 0.3_dp, 0.4_dp]
    mu = [0.2_dp, 0.1_dp, 0.0_dp, -0.1_dp]; var = [1.0_dp, 4.0_dp, 0.25_dp, 2.0_dp]
    k2 = transpose(reshape([1.0_dp, -1.0_dp, 0.5_dp, 0.25_dp, -2.0_dp, 1.0_dp, 0.125_dp, 3.0_dp], [2, 4]))
    do j = 1, size(x, 2)
      h = max(matmul(real(x(:, j), dp), k1) + b1, 0.0_dp)
      h = g * (h - mu) / sqrt(var + 0.001_dp) + be
      h = merge(h, 0.3_dp * h, h >= 0)
      y(:, j) = real(matmul(h, k2), wp)
    end do
  end subroutine reference

  subroutine expect(ok, what)
    logical, intent(in) :: ok
    character(len=*), intent(in) :: what
    if (.not. ok) then
      print '(a)', 'FAIL: '//what
      failures = failures + 1
    end if
  end subroutine expect
end program test_network
